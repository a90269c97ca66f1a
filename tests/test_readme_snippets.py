"""Every command, YAML file and Python snippet of the README runs, in the README's order, in one workspace where
the files they name exist, each shrunk: tiny images, a few images, one epoch (the flags are appended, and flags
win over presets and --config files). A README change that breaks a snippet, or two snippets that write the
same output, fails here.

What stands in for what a user has: the digits and tiny test_vit weights under the ViT checkpoints' names, a
one-task VTAB-1k root (dtd) for ~/vtab-1k, a small NIGHTS fixture for ~/nights, short SSF runs for a b c
runs/s0..s2, hub folders of merged ones for ft1 ft2 m1 m2, the pretrained Lite0 without its head for
pre.safetensors, short LoRA runs for runs/lora lora0..2, and short runs on the VTAB task for runs/a/dtd runs/b/dtd.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import adapt
from adapt.cli import cli
from test_backbones import _as_google_npz

ROOT = Path(__file__).resolve().parents[1]
TUNE = ["--epochs", "1", "--cooldown-epochs", "0", "--image-size", "32", "--limit", "16", "--batch-size", "8"]
SHRINK = {  # appended to each command (its flags win over a preset's and a --config file's)
    "tune": TUNE,
    "continual": ["--epochs", "1", "--image-size", "32", "--limit", "16"],
    "perceptual-init": ["--epochs", "1", "--image-size", "32", "--batch-size", "4"],
    "sensitivity": ["--image-size", "32", "--limit", "16", "--batches", "1", "--batch-size", "8"],
}
QUICK = {"image_size": 32, "limit": 16, "epochs": 1, "batch_size": 8}
VIT_WEIGHTS = ("vit_b16.safetensors", "augreg_in21k.safetensors", "dino_vitb16.safetensors")


def snippets() -> list[tuple[str, str]]:
    """(language, text) of each fenced block, in order; the two install commands are test_readme's."""
    blocks = re.findall(r"```(bash|python|yaml)\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return blocks[2:]


def commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def shrunk(command: str, places: dict[str, str]) -> list[str]:
    """The command with the workspace's stand-ins and its shrinking flags."""
    for name, place in places.items():
        command = command.replace(name, place)
    command = command.replace("vit_base_patch16_224", "test_vit").replace("--precision fp16", "")
    command = command.replace("--examples 256", "--examples 4").replace("--resume --epochs 20", "--resume --epochs 2")
    args = shlex.split(command)
    verb = args[args.index("adapt") + 1] if "adapt" in args else args[1]
    if "--resume" in args:
        return args  # a resumed run takes its options from its folder
    extra = list(SHRINK.get(verb, []))
    if "--preset" in args and verb in ("tune", "perceptual-init"):
        extra += ["--backbone", "test_vit"]
        if "spt" in args[args.index("--preset") + 1]:
            extra += ["--budget", "1%,2%"]  # the papers' budgets are larger than the tiny ViT
    return args + extra


def run(args: list[str], cwd: Path) -> tuple[int, str]:
    if args[0] == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})  # fmt: skip
        return result.returncode, result.stdout + result.stderr
    assert args[0] == "adapt", args
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, args[1:])
    finally:
        os.chdir(previous)
    return result.exit_code, result.output + (result.stderr or "")


def _tiny_vit_weights(workspace: Path) -> None:
    from safetensors.torch import save_file

    from adapt.backbones import create_backbone

    model, _ = create_backbone("test_vit", "random", 10, 32, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in VIT_WEIGHTS:
        save_file({k: v for k, v in state.items() if not k.startswith("head.")}, workspace / name)
    _as_google_npz(state, model.blocks[0].attn.num_heads, workspace / "ViT-B_16.npz")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, vtab_root):
    """The files the README's commands name before any of its commands makes them."""
    from adapt.data.triplets import make_fixture
    from adapt.merging.adapter_soup import pretrained_base
    from conftest import digit_image

    ws = tmp_path_factory.mktemp("readme")
    (ws / "photos").mkdir()
    for i in range(3):
        digit_image(i).save(ws / "photos" / f"digit{i}.png")
    _tiny_vit_weights(ws)
    shutil.copytree(vtab_root / "svhn", ws / "vtab-1k" / "dtd")
    make_fixture(ws / "nights", count=12, size=32)
    for seed, folder in enumerate(("runs/s0", "runs/s1", "runs/s2")):
        adapt.tune(ws / folder, method="ssf", seed=seed, lr=3e-3 * (1 + seed), **QUICK)
        shutil.copytree(ws / folder, ws / "abc"[seed])  # a b c: the same three runs under the README's names
    for folder, run in (("ft1", "runs/s0"), ("ft2", "runs/s1")):
        adapt.merge(ws / run, f"{ws / folder}/")
    shutil.copytree(ws / "ft1", ws / "m1")
    shutil.copytree(ws / "ft2", ws / "m2")
    shutil.copy(pretrained_base("embedded", ws), ws / "pre.safetensors")
    (ws / "pretrained-base.safetensors").unlink()
    for seed, folder in enumerate(("runs/lora", "lora0", "lora1")):
        adapt.tune(ws / folder, method="lora", seed=seed, **QUICK)
    shutil.copytree(ws / "lora1", ws / "lora2")
    for seed, folder in enumerate(("runs/a/dtd", "runs/b/dtd")):
        adapt.tune(ws / folder, method="ssf", data=f"vtab:{ws / 'vtab-1k' / 'dtd'}", backbone="test_vit",
                   weights=str(ws / "vit_b16.safetensors"), seed=seed, **QUICK)  # fmt: skip
    return ws


def test_every_readme_snippet_runs_shrunk(workspace):
    places = {"~/vtab-1k": str(workspace / "vtab-1k"), "nights:ROOT": f"nights:{workspace / 'nights'}",
              "~/nights": str(workspace / "nights")}  # fmt: skip
    python = []
    ran = 0
    for language, text in snippets():  # the YAML files first: the commands that read them may come before them
        if language == "yaml":
            name = text.splitlines()[0].removeprefix("#").strip()
            assert name.endswith(".yaml"), f"a README YAML block names its file on its first line: {text[:40]!r}"
            (workspace / name).write_text(text)
    for language, text in snippets():
        if language == "yaml":
            continue
        if language == "python":
            python.append(text)  # after the commands: they read what the commands wrote (merged/, exported/)
        else:
            for command in commands(text):
                args = shrunk(command, places)
                code, output = run(args, workspace)
                assert code == 0, f"README: {command}\nran as: {shlex.join(args)}\n{output[-3000:]}"
                ran += 1
    for text in python:
        code = re.sub(r"epochs=\d+", "epochs=1, image_size=32, limit=16", text, count=1) if "adapt.tune(" in text else text
        previous = os.getcwd()
        os.chdir(workspace)
        try:
            exec(compile(code, "README.md snippet", "exec"), {"__name__": "readme"})
        finally:
            os.chdir(previous)
    assert ran >= 45 and len(python) >= 6  # the parser found them all (49 commands, 6 Python snippets today)
    assert (workspace / "runs" / "ssf" / "adapter.safetensors").is_file() and (workspace / "mergekit.safetensors").is_file()
