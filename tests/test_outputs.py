"""The output guard: nothing a user owns is deleted or replaced unless asked, never an input, one writer at a time.

Every refusal is checked the same way: a non-zero exit, one line on stderr naming the
problem, and every file that was there before unchanged (sha256 of the whole tree).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapt.cli import cli

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--limit", "32"]


def run(*args, cwd: Path | None = None):
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(previous)


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (what 'unchanged' means here)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(result, phrase: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    result = run("tune", "--method", "lora", "--rank", "2", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def workspace(tmp_path, lora_run) -> Path:
    """A copy of the run (so that a failure here cannot spoil other tests) and a folder of the user's notes."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for file in lora_run.iterdir():
        (run_dir / file.name).write_bytes(file.read_bytes())
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    return tmp_path


def refusal_cases(ws: Path) -> list[tuple[list, str, Path | None]]:
    ckpt = ws / "run" / "adapter.safetensors"
    return [
        (["export", ckpt, ws / "notes"], "holds other files", None),
        (["export", "adapter.safetensors", "."], "holds other files", ws / "run"),
        (["export", ckpt, ws / "run"], "holds other files", None),
        (["export", ckpt, ckpt], "is one of the inputs", None),
        (["merge", ckpt, "--out", ckpt], "is one of the inputs", None),
        (["merge", ckpt, "--out", ws / "notes" / "todo.txt"], "exists; pass --overwrite", None),
        (["merge", ckpt, "--out", ws / "notes"], "holds other files", None),
        (["soup", ckpt, ws / "run" / "train_state.safetensors", "--out", ckpt], "is one of the inputs", None),
        (["tune", "--method", "lora", *QUICK, "--out", ws / "run"], "already holds a run", None),
        (["tune", *QUICK, "--out", ws / "run", "--resume", "--overwrite"], "give one of them", None),
        (["tune", *QUICK, "--out", ckpt], "is a file", None),
        (["import-peft", ws / "notes", "--out", ckpt], "exists; pass --overwrite", None),
        (["perceptual-init", "--data", "triplets:none.csv", "--from", ckpt, "--out", ckpt], "is one of the inputs", None),
        (["perceptual-init", "--data", "triplets:none.csv", "--out", ws / "notes" / "todo.txt"], "exists; pass --overwrite",
         None),
    ]


@pytest.mark.parametrize("case", range(14))
def test_refusals_leave_everything_as_it_was(workspace, case):
    args, phrase, cwd = refusal_cases(workspace)[case]
    before = tree(workspace)
    assert_refused(run(*args, cwd=cwd), phrase)
    assert tree(workspace) == before
    assert not [p for p in workspace.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def test_hard_link_to_an_input_is_the_input(workspace):
    ckpt = workspace / "run" / "adapter.safetensors"
    os.link(ckpt, workspace / "alias.safetensors")
    before = tree(workspace)
    assert_refused(run("merge", ckpt, "--out", workspace / "alias.safetensors", "--overwrite"), "is one of the inputs")
    assert tree(workspace) == before


def test_export_replaces_only_its_own_files_with_overwrite(workspace):
    ckpt = workspace / "run" / "adapter.safetensors"
    out = workspace / "exported"
    assert run("export", ckpt, "--out", out).exit_code == 0
    first = tree(out)
    assert_refused(run("export", ckpt, "--out", out), "pass --overwrite")
    assert tree(out) == first
    assert run("export", ckpt, "--out", out, "--overwrite").exit_code == 0
    assert set(tree(out)) == set(first)


def test_tune_over_a_run_needs_overwrite_and_keeps_the_users_files(workspace):
    run_dir = workspace / "run"
    (run_dir / "my-notes.md").write_text("mine")
    result = run("tune", "--method", "bitfit", *QUICK, "--out", run_dir, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (run_dir / "my-notes.md").read_text() == "mine"
    assert '"bitfit"' in (run_dir / "summary.json").read_text()


def test_continual_over_a_run_is_refused(tmp_path):
    out = tmp_path / "cl"
    out.mkdir()
    (out / "continual.json").write_text("{}")
    before = tree(tmp_path)
    assert_refused(run("continual", "--head", "linear", *QUICK, "--out", out), "already holds a run")
    assert tree(tmp_path) == before


LOCK_HOLDER = """
import sys, time
from adapt.outputs import exclusive_lock
with exclusive_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_fails_at_once(workspace):
    ckpt = workspace / "run" / "adapter.safetensors"
    out = workspace / "merged.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_refused(run("merge", ckpt, "--out", out), "being written by another adapt process")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert run("merge", ckpt, "--out", out).exit_code == 0  # the lock went with its holder


def test_a_second_tune_into_a_folder_being_written_fails_at_once(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_refused(run("tune", *QUICK, "--out", out), "being written by another adapt process")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_soup_replacing_another_layout_leaves_no_stale_file(tmp_path):
    from safetensors.torch import save_file
    import torch

    for name, value in (("a", 1.0), ("b", 3.0)):
        save_file({"w": torch.full((8,), value), "v": torch.full((8,), value)}, tmp_path / f"{name}.safetensors")
    inputs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    out = tmp_path / "s.safetensors"
    assert run("soup", *inputs, "--out", out).exit_code == 0
    assert run("soup", *inputs, "--out", out, "--max-shard-size", "32B", "--overwrite").exit_code == 0
    shards = sorted(p.name for p in tmp_path.glob("s-*.safetensors"))
    assert not out.exists() and len(shards) == 2 and (tmp_path / "s.safetensors.index.json").is_file()
    assert run("soup", *inputs, "--out", out, "--overwrite").exit_code == 0
    assert out.is_file() and not list(tmp_path.glob("s-*")) and not (tmp_path / "s.safetensors.index.json").exists()


def test_paths_and_names_are_printed_as_text_not_markup(workspace):
    out = workspace / "m[/]x[bold].safetensors"
    result = run("merge", workspace / "run" / "adapter.safetensors", "--out", out)
    assert result.exit_code == 0, result.output
    assert "m[/]x[bold].safetensors" in result.output and out.is_file()


def test_an_error_inside_a_data_loader_worker_is_its_own_line(tmp_path):
    from conftest import digit_image

    task = tmp_path / "task"
    (task / "images").mkdir(parents=True)
    digit_image(0).resize((64, 64)).save(task / "images" / "ok.jpg", quality=95)
    whole = (task / "images" / "ok.jpg").read_bytes()
    (task / "images" / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # a valid header, then the data ends
    for split in ("train800val200", "test"):
        (task / f"{split}.txt").write_text("images/ok.jpg 0\nimages/cut.jpg 1\n")
    result = run("tune", "--data", f"vtab:{task}", "--workers", "1", *QUICK, "--out", tmp_path / "o")
    assert_refused(result, "unreadable image")
    assert "Original Traceback" not in result.output
