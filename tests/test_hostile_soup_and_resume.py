"""Hostile files and killed runs around soups and resumes: an input truncated mid-soup, a file named like the
`embedded` keyword, scratch folders and temp files a kill left, malformed caches."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapt.cli import cli
from adapt.errors import AdaptError
from test_bad_inputs import assert_one_line


def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(64, 64, generator=generator) for i in range(4)}


def test_an_input_truncated_mid_soup_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Another process truncates an ingredient after the soup has started: the next tensor read from it says so
    (reading the mapping there would end the process with SIGBUS), and no temp output or lock is left."""
    from adapt.merging import tensors
    from adapt.merging.soup import stream_soup

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"in{i}.safetensors")
        save_file(_state(i), paths[-1])
    real_write = tensors.StreamingWriter.write

    def write_then_truncate(self, key, tensor):
        real_write(self, key, tensor)
        if key == "layer0.weight":
            os.truncate(paths[1], 200)

    monkeypatch.setattr(tensors.StreamingWriter, "write", write_then_truncate)
    with pytest.raises(AdaptError, match="in1.safetensors changed while it was read: it is now 200 bytes"):
        stream_soup(paths, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in0.safetensors", "in1.safetensors"]


def test_a_soup_of_an_input_truncated_before_it_starts_is_one_line(tmp_path):
    for i in range(2):
        save_file(_state(i), tmp_path / f"in{i}.safetensors")
    os.truncate(tmp_path / "in1.safetensors", 300)
    result = CliRunner().invoke(cli, ["soup", str(tmp_path / "in0.safetensors"), str(tmp_path / "in1.safetensors"),
                                      "--out", str(tmp_path / "out.safetensors")])  # fmt: skip
    assert_one_line(result, "in1.safetensors is truncated or not a safetensors file", 1)


def _lite0_fine_tunes(tmp_path, count: int = 2) -> list:
    from adapt.backbones import create_backbone

    trunk, _ = create_backbone("tf_efficientnet_lite0", "embedded", 0)
    pretrained = {k: v.clone() for k, v in trunk.state_dict().items()}
    paths = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() and "running" not in k
                 else v for k, v in pretrained.items()}  # fmt: skip
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(state, paths[-1])
    return paths


def test_base_embedded_is_the_keyword_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    paths = _lite0_fine_tunes(tmp_path)
    runner = CliRunner()
    first = runner.invoke(cli, ["soup", *map(str, paths), "--recipe", "task-arithmetic", "--base", "embedded", "--out",
                                str(tmp_path / "a.safetensors")])  # fmt: skip
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path)
    save_file({"nothing.like.lite0": torch.zeros(3)}, tmp_path / "embedded")  # a file named like the keyword
    second = runner.invoke(cli, ["soup", *map(str, paths), "--recipe", "task-arithmetic", "--base", "embedded", "--out",
                                 str(tmp_path / "b.safetensors")])  # fmt: skip
    assert second.exit_code == 0, second.output
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".soup.")]  # the scratch base is gone


def test_a_base_that_does_not_fit_is_named_as_the_user_gave_it(tmp_path):
    from adapt.backbones import create_backbone

    model, _ = create_backbone("test_vit", "random", 0, 32)
    for i in range(2):
        save_file({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / f"vit{i}.safetensors")
    result = CliRunner().invoke(cli, ["soup", str(tmp_path / "vit0.safetensors"), str(tmp_path / "vit1.safetensors"),
                                      "--recipe", "task-arithmetic", "--base", "embedded", "--out",
                                      str(tmp_path / "s.safetensors")])  # fmt: skip
    assert_one_line(result, "the base embedded (tf_efficientnet_lite0) lacks", 1)
    assert ".soup." not in result.stderr


def test_a_scratch_folder_a_killed_soup_left_is_removed_by_the_next(tmp_path):
    from adapt.outputs import SCRATCH_OWNER, scratch_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, foreign, live = tmp_path / ".soup.killed", tmp_path / ".soup.notours", tmp_path / ".soup.running"
    for folder, owner in ((stale, dead.stdout.strip()), (foreign, None), (live, str(os.getppid()))):
        folder.mkdir()
        (folder / "pretrained-base.safetensors").write_bytes(b"x" * 1000)
        if owner is not None:
            (folder / SCRATCH_OWNER).write_text(owner)
    with scratch_folder(tmp_path / "out.safetensors", ".soup.") as scratch:
        assert scratch.is_dir() and (scratch / SCRATCH_OWNER).read_text() == str(os.getpid())
    assert not stale.exists() and foreign.exists() and live.exists() and not scratch.exists()


def test_a_resume_removes_the_temp_files_a_kill_left_and_says_when_only_the_test_is_left(tmp_path):
    from adapt.train import STATE_FILE

    quick = ["--method", "linear", "--image-size", "32", "--limit", "32", "--epochs", "2", "--out", str(tmp_path / "run")]
    runner = CliRunner()
    assert runner.invoke(cli, ["tune", *quick]).exit_code == 0
    stale = [tmp_path / "run" / ".adapter.safetensors.a1B2c3D4.tmp", tmp_path / "run" / f".{STATE_FILE}.zzzzzzzz.tmp"]
    mine = tmp_path / "run" / ".notes.abcdefgh.tmp"  # not a name adapt writes: kept
    for path in [*stale, mine]:
        path.write_bytes(b"half")
    (tmp_path / "run" / "summary.json").unlink()  # as if killed in the final test
    resumed = runner.invoke(cli, ["tune", "--out", str(tmp_path / "run"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "all 2 epochs are trained: only the final test is left" in resumed.output and "of 2" not in resumed.output
    assert not any(p.exists() for p in stale) and mine.exists()


def test_a_malformed_digest_row_is_hashed_anew(tmp_path, monkeypatch):
    from adapt.file_digests import CACHE_NAME, file_records

    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path / "cache"))
    save_file(_state(0), tmp_path / "x.safetensors")
    first = file_records([tmp_path / "x.safetensors"])[0]["sha256"]
    with sqlite3.connect(tmp_path / "cache" / CACHE_NAME) as db:
        db.execute("UPDATE digests SET sha256 = 'not-a-digest'")
    assert file_records([tmp_path / "x.safetensors"])[0]["sha256"] == first


def test_a_methods_table_cache_of_wrong_types_is_rebuilt(tmp_path, monkeypatch):
    from adapt.methods.rows_cache import cache_key, cached_method_rows

    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path))
    names = ["linear", "bitfit"]
    path = tmp_path / f"methods-{cache_key(names, 'test_vit', 10, 32)}.json"
    path.write_text(json.dumps([{"name": "linear", "trainable": "many", "total": None, "mergeable": "yes",
                                 "default_lr": [], "summary": 3, "budgeted": 0}] * 2))  # fmt: skip
    rows = cached_method_rows(names, "test_vit", 10, 32)
    assert [r.name for r in rows] == names and all(isinstance(r.trainable, int) for r in rows)
    assert isinstance(json.loads(path.read_text())[0]["trainable"], int)  # rewritten
