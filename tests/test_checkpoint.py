import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.checkpoint import atomic_path, read_checkpoint
from conftest import perturb_trainable

CLASSES = ["a", "b", "c"]


def _saved(tmp_path, method="ssf", backbone="test_vit", seed=0):
    adapted = AdaptedModel.create(method, CLASSES, 160, backbone, "random", seed=seed)
    path = tmp_path / f"{method}.safetensors"
    adapted.save(path, {"seed": seed, "data": "digits"})
    return adapted, path


def _rewrite(path, tensors, metadata):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)


def test_roundtrip_gives_identical_outputs(tmp_path):
    adapted, path = _saved(tmp_path)
    perturb_trainable(adapted.model, 0.1)
    adapted.save(path, {"seed": 0})
    loaded, meta = AdaptedModel.from_checkpoint(path)
    assert meta.class_names == CLASSES and meta.method == "ssf" and meta.backbone == "test_vit"
    x = torch.randn(2, 3, 160, 160)
    adapted.model.eval(), loaded.model.eval()
    assert torch.equal(adapted.model(x), loaded.model(x))
    tensors, _ = read_checkpoint(path)
    assert all(".ssf." in k or k.startswith("head.") for k in tensors)  # only trained tensors are stored


def test_other_backbone_weights_are_refused(tmp_path):
    _, path = _saved(tmp_path, seed=0)
    other = tmp_path / "other.safetensors"
    model = AdaptedModel.create("linear", CLASSES, 160, "test_vit", "random", seed=5).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, other)
    with pytest.raises(AdaptError, match="was trained on test_vit weights with sha256 .* but .*other.safetensors has"):
        AdaptedModel.from_checkpoint(path, weights=str(other))


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path):
    _, path = _saved(tmp_path)
    tensors, metadata = load_file(path), read_checkpoint(path)[1].to_metadata()
    tensors.pop("blocks.0.attn.qkv.ssf.scale")
    tensors["blocks.0.extra"] = torch.zeros(1)
    tensors["head.weight"] = torch.zeros(4, 64)
    _rewrite(path, tensors, metadata)
    with pytest.raises(AdaptError) as error:
        AdaptedModel.from_checkpoint(path)
    message = str(error.value)
    assert "missing: blocks.0.attn.qkv.ssf.scale" in message
    assert "unexpected: blocks.0.extra" in message
    assert "wrong shapes: head.weight: file (4, 64) vs model (3, 64)" in message


def test_other_method_config_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    tensors, meta = read_checkpoint(path)
    metadata = meta.to_metadata()
    metadata["method_options"] = '{"init_std": 0.02, "rank": 8}'
    _rewrite(path, tensors, metadata)
    with pytest.raises(AdaptError, match="method ssf: unknown option 'rank'"):
        AdaptedModel.from_checkpoint(path)
    metadata["method_options"] = '{"targets": "attn"}'  # fewer SSF layers than the tensors hold
    _rewrite(path, tensors, metadata)
    with pytest.raises(AdaptError, match="unexpected: blocks.0.mlp.fc1.ssf.scale"):
        AdaptedModel.from_checkpoint(path)


def test_non_finite_values_truncation_and_foreign_files(tmp_path):
    _, path = _saved(tmp_path)
    tensors, meta = read_checkpoint(path)
    tensors["head.bias"][1] = float("nan")
    _rewrite(path, tensors, meta.to_metadata())
    with pytest.raises(AdaptError, match="tensor 'head.bias' has NaN or Inf"):
        read_checkpoint(path)

    _, good = _saved(tmp_path, method="linear")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdaptError, match="truncated or not a safetensors file"):
        read_checkpoint(truncated)

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(AdaptError, match="not an adapt checkpoint"):
        read_checkpoint(plain)

    metadata = meta.to_metadata()
    del metadata["class_names"]
    _rewrite(path, read_checkpoint(good)[0], metadata)
    with pytest.raises(AdaptError, match="metadata field 'class_names' is missing"):
        read_checkpoint(path)
    with pytest.raises(AdaptError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.safetensors")


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_written_files_get_the_usual_permissions(tmp_path):
    from adapt.checkpoint import umasked, write_text_atomic

    write_text_atomic(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == umasked(0o666)
