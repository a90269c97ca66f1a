import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images

from adapt import AdaptError
from adapt.backbones import RANDOM_WEIGHTS, create_backbone, weights_sha256
from adapt.data.transforms import eval_transform

BELL_COTE, CHURCH, DAISY = 442, 497, 985


def test_embedded_backbone_recognises_the_sample_photos():
    model, info = create_backbone(num_classes=1000)
    model.eval()
    transform = eval_transform(224, info.preprocessing.mean, info.preprocessing.std)
    images = [transform(Image.fromarray(array)) for array in load_sample_images().images]  # china.jpg, flower.jpg
    with torch.no_grad():
        top5 = model(torch.stack(images)).topk(5).indices.tolist()
    assert top5[0][0] in (BELL_COTE, CHURCH), top5[0]
    assert top5[1][0] == DAISY, top5[1]


def test_weights_roundtrip_through_safetensors_and_pth(tmp_path):
    source, info = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=5, seed=1)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model, loaded = create_backbone("test_vit", tmp_path / name, num_classes=5, seed=2)
        assert loaded.sha256 == info.sha256
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))


def test_random_weights_are_seeded_and_hash_sees_changes():
    a, info_a = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=0)
    _, info_b = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=0)
    _, info_c = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3, seed=1)
    assert info_a.sha256 == info_b.sha256 != info_c.sha256
    with torch.no_grad():
        a.blocks[0].attn.qkv.weight[0, 0] += 1e-3
    assert weights_sha256(a) != info_a.sha256


def test_mismatched_weights_name_keys_and_shapes(tmp_path):
    model, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3)
    state = dict(model.state_dict())
    state.pop("cls_token")
    state["extra.weight"] = torch.zeros(2)
    state["pos_embed"] = torch.zeros(1, 2, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "bad.safetensors")
    with pytest.raises(AdaptError) as error:
        create_backbone("test_vit", tmp_path / "bad.safetensors", num_classes=3)
    message = str(error.value)
    assert "missing: cls_token" in message and "unexpected: extra.weight" in message
    assert "wrong shapes: pos_embed: file (1, 2, 3) vs model (1, 101, 64)" in message and "\n" not in message
    assert "pass image_size" in message  # the Python API names the parameter


def test_unknown_backbone_and_unreadable_weights(tmp_path):
    with pytest.raises(AdaptError, match="unknown backbone 'no_such_net'"):
        create_backbone("no_such_net")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AdaptError, match="junk.pth is not a weights file: expected a .safetensors file or a torch"):
        create_backbone("test_vit", tmp_path / "junk.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 a broken zip")  # looks like a torch file, is not one
    with pytest.raises(AdaptError, match="cannot read weights file"):
        create_backbone("test_vit", tmp_path / "corrupt.pth")
    with pytest.raises(AdaptError, match="weights file not found"):
        create_backbone("test_vit", tmp_path / "missing.safetensors")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "f": np.dtype}, tmp_path / "code.pth")  # weights_only=False content
    with pytest.raises(AdaptError):
        create_backbone("test_vit", tmp_path / "code.pth")


def test_a_fresh_head_starts_as_the_peft_papers_code_starts_it():
    import timm

    from adapt.backbones import create_backbone

    model, _ = create_backbone("tf_efficientnet_lite0", "embedded", 10, 64, seed=0)  # default: trunc-normal
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    assert 0.018 < float(weight.std()) < 0.022 and abs(float(weight.mean())) < 0.002 and not bias.any()
    zeros, _ = create_backbone("tf_efficientnet_lite0", "embedded", 10, 64, seed=0, head_init="zeros")
    assert not zeros.classifier.weight.any() and not zeros.classifier.bias.any()
    own, _ = create_backbone("tf_efficientnet_lite0", "embedded", 10, 64, seed=0, head_init="timm")
    torch.manual_seed(0)
    reference = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    assert torch.equal(own.classifier.weight, reference.classifier.weight)  # timm's own fan-out init, untouched
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the papers' start gives logits near 0; EfficientNet's own gives large ones
        assert model.eval()(x).abs().max() < 0.5 * own.eval()(x).abs().max()
    for key in model.state_dict():  # only the head differs
        if not key.startswith("classifier."):
            assert torch.equal(model.state_dict()[key], own.state_dict()[key]), key


def _as_google_npz(state: dict[str, torch.Tensor], heads: int, path) -> None:
    """A timm ViT state dict in the layout of Google's original ViT-B_16.npz (the inverse of timm's npz loader)."""
    import numpy as np

    arrays = {"embedding/kernel": state["patch_embed.proj.weight"].permute(2, 3, 1, 0), "embedding/bias": state["patch_embed.proj.bias"],
              "cls": state["cls_token"], "Transformer/posembed_input/pos_embedding": state["pos_embed"],
              "Transformer/encoder_norm/scale": state["norm.weight"], "Transformer/encoder_norm/bias": state["norm.bias"],
              "head/kernel": state["head.weight"].T, "head/bias": state["head.bias"]}  # fmt: skip
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    for i in blocks:
        b, prefix = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        dim = state[b + "norm1.weight"].shape[0]
        mha = prefix + "MultiHeadDotProductAttention_1/"
        for n, (weight, bias) in zip(("query", "key", "value"), zip(state[b + "attn.qkv.weight"].chunk(3),
                                                                    state[b + "attn.qkv.bias"].chunk(3))):  # fmt: skip
            arrays[f"{mha}{n}/kernel"] = weight.T.reshape(dim, heads, dim // heads)
            arrays[f"{mha}{n}/bias"] = bias.reshape(heads, dim // heads)
        arrays[mha + "out/kernel"] = state[b + "attn.proj.weight"].reshape(dim, heads, dim // heads).permute(1, 2, 0)
        arrays[mha + "out/bias"] = state[b + "attn.proj.bias"]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            arrays[f"{prefix}{theirs}/scale"], arrays[f"{prefix}{theirs}/bias"] = state[b + ours + ".weight"], state[b + ours + ".bias"]
        for r in range(2):
            arrays[f"{prefix}MlpBlock_3/Dense_{r}/kernel"] = state[f"{b}mlp.fc{r + 1}.weight"].T
            arrays[f"{prefix}MlpBlock_3/Dense_{r}/bias"] = state[f"{b}mlp.fc{r + 1}.bias"]
    np.savez(path, **{k: v.detach().contiguous().numpy() for k, v in arrays.items()})


def test_a_google_npz_checkpoint_gives_the_logits_of_the_same_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    from adapt.backbones import create_backbone

    source, _ = create_backbone("test_vit", "random", 5, None, seed=3)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "vit.safetensors")
    _as_google_npz(state, source.blocks[0].attn.num_heads, tmp_path / "ViT-B_16.npz")
    from_npz, info = create_backbone("test_vit", str(tmp_path / "ViT-B_16.npz"), 5, None, seed=0)
    from_file, _ = create_backbone("test_vit", str(tmp_path / "vit.safetensors"), 5, None, seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (from_npz.eval()(x) - from_file.eval()(x)).abs().max() <= 1e-5
    assert "timm's npz loader" in info.notes[0] and "vit_base_patch16_224.orig_in21k" in info.notes[0]
    with pytest.raises(AdaptError, match="timm loads these into ViTs only"):
        create_backbone("tf_efficientnet_lite0", str(tmp_path / "ViT-B_16.npz"), 5, 64)


@pytest.mark.parametrize("fault, phrase", [
    ("one-element scale", "holds (1,) values for 'blocks.0.norm1.weight', whose shape is (64,)"),
    ("text member", "member 'Transformer/encoder_norm/scale' holds <U5 values, not numbers"),
    ("huge header", "member 'huge' claims shape (1000000, 1000000)"),
])  # fmt: skip
def test_a_hostile_npz_is_refused_by_name_before_it_is_read(tmp_path, fault, phrase):
    import io
    import zipfile

    import numpy as np

    from adapt.backbones import create_backbone

    source, _ = create_backbone("test_vit", "random", 5, None, seed=3)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "ViT-B_16.npz"
    _as_google_npz(state, source.blocks[0].attn.num_heads, path)
    arrays = dict(np.load(path))
    if fault == "one-element scale":
        arrays["Transformer/encoderblock_0/LayerNorm_0/scale"] = np.array([7.0], dtype=np.float32)
    elif fault == "text member":
        arrays["Transformer/encoder_norm/scale"] = np.array(["hello"])
    np.savez(path, **arrays)
    if fault == "huge header":
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("huge.npy", header.getvalue() + b"\0" * 64)
    assert state["blocks.0.norm1.weight"].shape == (64,)
    with pytest.raises(AdaptError, match=re.escape(phrase)):
        create_backbone("test_vit", str(path), 5, None, seed=0)
