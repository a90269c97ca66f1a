"""Our outputs in the timm / Hugging Face ecosystem, and every checkpoint we write in every command.

The plain-timm checks run in a subprocess that never imports adapt, as a user's script would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.backbones import RANDOM_WEIGHTS, create_backbone
from adapt.cli import cli
from adapt.evaluation import predict_files
from adapt.merging.reparam import merge_adapted
from conftest import digit_image

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--limit", "64"]
TOLERANCE = 1e-4  # max |difference| of logits or probabilities between a merged model and the adapted one


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """An SSF run, its merge as a file and as a hub folder, and two continual runs (linear, language heads)."""
    root = tmp_path_factory.mktemp("interop")
    run("tune", *QUICK, "--out", root / "ssf")
    run("merge", root / "ssf" / "adapter.safetensors", "--out", root / "merged.safetensors")
    run("merge", root / "ssf" / "adapter.safetensors", "--out", f"{root / 'hub'}/")
    for head in ("linear", "language"):
        run("continual", "--head", head, "--initial", "5", "--increment", "5", *QUICK, "--out", root / head)
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Digit images as files, one of them not square (the resize squashes it, in timm as in adapt)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(5):
        image = digit_image(i)
        if i == 4:
            image = image.resize((40, 24))
        paths.append(folder / f"{i}.png")
        image.save(paths[-1])
    return paths


def test_every_safetensors_file_we_write_says_format_pt(runs, tmp_path):
    run("soup", runs / "merged.safetensors", runs / "hub" / "model.safetensors", "--out", tmp_path / "soup.safetensors")
    run("tune", "--method", "lora", "--rank", "2", *QUICK, "--out", tmp_path / "lora")
    run("export", tmp_path / "lora" / "adapter.safetensors", tmp_path / "peft")
    files = [runs / "ssf" / "adapter.safetensors", runs / "ssf" / "train_state.safetensors", runs / "merged.safetensors",
             runs / "hub" / "model.safetensors", runs / "language" / "task_2" / "adapter.safetensors",
             tmp_path / "soup.safetensors", tmp_path / "peft" / "adapter_model.safetensors",
             tmp_path / "peft" / "base" / "model.safetensors"]  # fmt: skip
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            assert (handle.metadata() or {}).get("format") == "pt", file


def test_hugging_face_loaders_take_merged_files(runs):
    from accelerate.utils import load_checkpoint_in_model
    from huggingface_hub import load_torch_model

    adapted, _ = AdaptedModel.from_checkpoint(runs / "ssf" / "adapter.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = adapted.model.eval()(x)
    for load in (lambda m, f: load_checkpoint_in_model(m, str(f), strict=True),
                 lambda m, f: load_torch_model(m, f, strict=True)):  # fmt: skip
        model = timm.create_model("tf_efficientnet_lite0", num_classes=10).eval()
        load(model, runs / "merged.safetensors")
        with torch.no_grad():
            assert (model(x) - expected).abs().max() <= TOLERANCE


PLAIN_TIMM_PREDICT = """
import json, sys, torch
# the environment's torchvision fix (see adapt/_compat.py), without importing adapt:
lib = torch.library.Library("torchvision", "FRAGMENT")
for op in ("nms", "qnms"):
    lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
import timm
from PIL import Image
from timm.data import create_transform, resolve_data_config
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
transform = create_transform(**resolve_data_config(model=model))
names = model.pretrained_cfg["label_names"]
out = []
with torch.no_grad():
    for path in sys.argv[2:]:
        probabilities = model(transform(Image.open(path).convert("RGB")).unsqueeze(0)).softmax(-1)[0]
        out.append({names[i]: float(p) for i, p in enumerate(probabilities)})
assert "adapt" not in sys.modules
print(json.dumps(out))
"""


def test_a_hub_folder_predicts_in_plain_timm_as_adapt_does(runs, images):
    adapted, _ = AdaptedModel.from_checkpoint(runs / "ssf" / "adapter.safetensors")
    ours = predict_files(adapted, images, top_k=10).predictions
    command = [sys.executable, "-c", PLAIN_TIMM_PREDICT, str(runs / "hub"), *map(str, images)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout)
    for prediction, probabilities in zip(ours, theirs):
        assert prediction.top[0][0] == max(probabilities, key=probabilities.get)
        for name, p in prediction.top:
            assert abs(probabilities[name] - p) <= TOLERANCE, (prediction.path, name)
    config = json.loads((runs / "hub" / "config.json").read_text())
    assert config["num_classes"] == 10 and config["label_names"][0] == "zero"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 1.0


def test_hub_folders_are_backbones_and_weights(runs, folder_root):
    model, info = create_backbone(f"local-dir:{runs / 'hub'}", num_classes=10)
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    plain.load_state_dict(load_state(runs / "merged.safetensors"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))
    assert info.preprocessing.image_size == 32 and info.weights == str((runs / "hub" / "model.safetensors").resolve())
    _, from_dir = create_backbone("tf_efficientnet_lite0", runs / "hub", num_classes=10)  # --weights DIR
    assert from_dir.sha256 == info.sha256
    result = run("tune", "--backbone", f"local-dir:{runs / 'hub'}", "--data", f"folder:{folder_root}", "--method",
                 "linear", "--epochs", "1", "--limit", "16", "--out", runs / "from-hub")  # fmt: skip
    assert "32px" in result.output  # the folder's preprocessing is the default


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_hf_hub_names_come_from_the_local_cache_only(runs, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--someone--lite0-digits" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((runs / "hub" / name).read_bytes())
    (tmp_path / "models--someone--lite0-digits" / "refs").mkdir()
    (tmp_path / "models--someone--lite0-digits" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    _, info = create_backbone("hf-hub:someone/lite0-digits", num_classes=10)
    _, expected = create_backbone(f"local-dir:{runs / 'hub'}", num_classes=10)
    assert info.sha256 == expected.sha256
    with pytest.raises(AdaptError, match="not in the local Hugging Face cache"):
        create_backbone("hf-hub:someone/elsewhere", num_classes=10)


@pytest.mark.parametrize("prefix", ["module.", "model.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    source, info = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=1)
    save_file({prefix + k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    _, loaded = create_backbone("test_vit", tmp_path / "w.safetensors", num_classes=3, seed=2)
    assert loaded.sha256 == info.sha256 and any("prefix" in note for note in loaded.notes)


def test_position_embeddings_are_resampled_to_the_image_size(tmp_path):
    source, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=1)  # 160 px: a 10x10 grid
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    model, info = create_backbone("test_vit", tmp_path / "w.safetensors", num_classes=3, image_size=96)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [6, 6], num_prefix_tokens=1)
    assert torch.equal(model.pos_embed.detach(), expected)
    assert info.notes == ("resampled pos_embed from a 10x10 to a 6x6 grid (bicubic)",)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 3)


def test_a_named_backbone_without_weights_must_say_random(tmp_path):
    with pytest.raises(AdaptError, match="or weights random"):
        create_backbone("test_vit", num_classes=3)
    result = CliRunner().invoke(cli, ["tune", "--backbone", "test_vit", "--limit", "8", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "--weights random" in result.stderr
    result = run("tune", "--backbone", "test_vit", "--weights", "random", "--method", "linear", "--epochs", "1",
                 "--limit", "16", "--image-size", "32", "--out", tmp_path / "r")  # fmt: skip
    assert "random weights" in result.output


@pytest.mark.parametrize("head", ["linear", "language"])
def test_continual_task_checkpoints_work_in_every_command(runs, images, tmp_path, head):
    task = runs / head / "task_1" / "adapter.safetensors"
    adapted, meta = AdaptedModel.from_checkpoint(task)
    assert meta.head["kind"] == head and meta.head["task_sizes"] == [5] and len(adapted.class_names) == 5
    if head == "language":
        assert adapted.model.head._embedder is None  # the text targets came from the checkpoint
    result = run("eval", task)
    assert "(5 classes)" in result.output  # scored on the images of the classes it knows
    assert "%" in run("predict", task, images[0], "--top-k", "2").output
    assert f"{head} (incremental" in run("info", task).output
    run("merge", task, "--out", tmp_path / "merged.safetensors")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = adapted.model.eval()(x)
        plain = timm.create_model("tf_efficientnet_lite0", num_classes=5).eval()
        plain.load_state_dict(load_state(tmp_path / "merged.safetensors"))
        after = plain(x)
    if head == "linear":
        assert (before - after).abs().max() <= TOLERANCE
    else:  # a language head normalizes features: same ranking of the classes, scores scaled per image
        assert torch.equal(before.argsort(-1), after.argsort(-1))
        ratio = after / before
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-3) and (ratio > 0).all()


def test_eval_scores_merged_models_and_their_soups(runs, tmp_path):
    adapter = run("eval", runs / "ssf" / "adapter.safetensors").output.split("accuracy")[1].split("on")[0]
    merged = run("eval", runs / "merged.safetensors").output.split("accuracy")[1].split("on")[0]
    assert adapter.strip() == merged.strip()
    run("soup", runs / "merged.safetensors", runs / "hub" / "model.safetensors", "--out", tmp_path / "soup.safetensors")
    souped = run("eval", tmp_path / "soup.safetensors").output.split("accuracy")[1].split("on")[0]
    assert souped.strip() == merged.strip()  # a soup of two copies is the model itself
    assert "merged model" in run("info", runs / "merged.safetensors").output


def test_merge_of_the_merged_adapted_model_is_exact(runs):
    adapted, _ = AdaptedModel.from_checkpoint(runs / "linear" / "task_2" / "adapter.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = adapted.model.eval()(x)
        merged, report = merge_adapted(adapted)
        assert report.note == "" and (merged(x) - before).abs().max() <= TOLERANCE
