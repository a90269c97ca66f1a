"""Lean and fast: the shipped `adapt methods` table, the module layering, hub folders written once."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from click.testing import CliRunner

from adapt.cli import cli


def test_the_shipped_methods_table_is_what_the_methods_count():
    from adapt.methods import METHODS, method_rows
    from adapt.methods.rows_cache import SHIPPED, SHIPPED_FOR

    shipped = json.loads(SHIPPED.read_text())
    fresh = [dataclasses.asdict(row) for row in method_rows(list(METHODS), **SHIPPED_FOR)]
    assert shipped == fresh, (
        "adapt/methods/default_rows.json is stale: regenerate it with python -c 'import adapt; from adapt.methods import "
        "METHODS; from adapt.methods.rows_cache import write_shipped_rows; write_shipped_rows(list(METHODS))'"
    )


def test_a_cold_methods_call_on_the_default_backbone_imports_no_torch(tmp_path):
    code = ("import sys, os; os.environ['ADAPT_CACHE_DIR'] = sys.argv[1]; from adapt.cli import cli; "
            "from click.testing import CliRunner; result = CliRunner().invoke(cli, ['methods']); "
            "print(result.exit_code, 'torch' in sys.modules, 'ssf' in result.output and 'spt' in result.output)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty-cache")], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.stdout.split() == ["0", "False", "True"], result.stdout + result.stderr
    assert not (tmp_path / "empty-cache").exists()  # nothing built, nothing kept


def test_another_backbone_says_that_it_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path))
    first = CliRunner().invoke(cli, ["methods", "--backbone", "test_vit", "--num-classes", "3"])
    assert first.exit_code == 0 and "counting each method's parameters on test_vit" in first.output
    again = CliRunner().invoke(cli, ["methods", "--backbone", "test_vit", "--num-classes", "3"])
    assert "counting" not in again.output


def test_evaluation_does_not_import_the_training_loop():
    code = "import sys, adapt.evaluate; print('adapt.train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


def test_a_hub_folder_writes_its_weights_once(tmp_path, monkeypatch):
    import safetensors.torch

    import adapt.hub
    from adapt.backbones import create_backbone
    from adapt.hub import save_hub_folder

    writes = []
    original = adapt.hub.save_tensors_atomic

    def counted(path, *args, **kwargs):
        writes.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(adapt.hub, "save_tensors_atomic", counted)
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *a, **k: writes.append("timm's copy"))
    model, _ = create_backbone("test_vit", "random", num_classes=3)
    folder = save_hub_folder(tmp_path / "hub", model, ["a", "b", "c"], 224, (0.5,) * 3, (0.5,) * 3, {"k": "v"})
    assert len(writes) == 1 and writes[0].endswith("model.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text())["label_names"] == ["a", "b", "c"]
