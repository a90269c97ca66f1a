"""`adapt info` on malformed files adapt would have written: one line naming the file and the field, never a
traceback (a table of cases)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from adapt.cli import cli
from test_bad_inputs import assert_one_line

TENSORS = {"w": torch.zeros(2, 2)}
ALLOCATION = {"budget": 10, "rank": 2, "structured": [], "unstructured": {}, "vectors": [], "costs": {}, "sizes": {}}
SUMMARY = {"test_acc": 0.5, "run": {}, "history": [], "test_split": "test", "trainable_params": 1, "total_params": 2}


def safetensors(metadata):
    return lambda path: save_file(TENSORS, path / "x.safetensors", metadata=metadata) or path / "x.safetensors"


def text(name, content):
    def write(path):
        (path / name).write_text(content)
        return path / name

    return write


def peft(config, meta=None):
    def write(path):
        folder = path / "peft"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(config)
        if meta is not None:
            (folder / "adapt.json").write_text(meta)
        return folder

    return write


CASES = [  # (what, how to write it, the phrase of the one line)
    ("soup not JSON", safetensors({"soup": "{nope"}), "metadata 'soup' is not valid JSON"),
    ("soup a list", safetensors({"soup": "[1, 2]"}), "metadata 'soup' is not a JSON object"),
    ("perceptual not JSON", safetensors({"perceptual_init": "{"}), "metadata 'perceptual_init' is not valid JSON"),
    ("perceptual a number", safetensors({"perceptual_init": "3"}), "metadata 'perceptual_init' is not a JSON object"),
    ("run not JSON", safetensors({"run": "x", "epoch": "1", "optimizer": "{}"}), "metadata 'run' is not valid JSON"),
    ("run a string", safetensors({"run": '"x"', "epoch": "1", "optimizer": "{}"}), "metadata 'run' is not a JSON object"),
    ("epoch not a number", safetensors({"run": "{}", "epoch": "two", "optimizer": "{}"}), "metadata 'epoch' is not a whole"),
    ("allocation types", text("a.json", json.dumps({**ALLOCATION, "structured": 3})), "structured"),
    ("allocation vectors", text("a.json", json.dumps({**ALLOCATION, "vectors": {"a": 1}})), "vectors"),
    ("summary history", text("s.json", json.dumps({**SUMMARY, "history": 5})), "'history' is int"),
    ("summary accuracy", text("s.json", json.dumps({**SUMMARY, "test_acc": "high"})), "'test_acc' is str"),
    ("jsonl line", text("m.jsonl", '{"epoch": 1}\nnot json\n'), "line 2 is not valid JSON"),
    ("peft config not JSON", peft("{"), "adapter_config.json is not valid JSON"),
    ("peft config a list", peft("[]"), "adapter_config.json is not a JSON object"),
    ("adapt.json not JSON", peft("{}", "{"), "adapt.json is not valid JSON"),
    ("adapt.json a list", peft("{}", "[1]"), "adapt.json is not a JSON object"),
    ("json not JSON", text("x.json", "{"), "is not valid JSON"),
]


@pytest.mark.parametrize("what, write, phrase", CASES, ids=[c[0] for c in CASES])
def test_info_on_a_malformed_file_is_one_line(tmp_path, what, write, phrase):
    target = write(tmp_path)
    result = CliRunner().invoke(cli, ["info", str(target)])
    assert_one_line(result, phrase, 1)
    assert str(target.name) in result.stderr
