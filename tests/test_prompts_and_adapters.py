"""VPT-Deep/Shallow, AdaptFormer and RepAdapter: the papers' sizes, forwards equal to hand-written versions of the
official code, and every new method through train, save, load, eval and resume."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import Block

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.api import evaluate
from adapt.backbones import RANDOM_WEIGHTS, create_backbone
from adapt.merging.reparam import merge_checkpoint
from adapt.methods import count_trainable, create_method
from adapt.methods.repadapter import LinearAdapter
from adapt.train import TrainConfig
from adapt.train_state import STATE_FILE
from adapt.tuning import TuneJob, tune
from conftest import perturb_trainable


@pytest.fixture(scope="module")
def vit_base():
    return timm.create_model("vit_base_patch16_224", num_classes=0)


@pytest.mark.parametrize("name, options, expected", [
    ("repadapter", {}, 24 * (768 * 8 + 8 + 768 * 4 + 768)),  # 239,808: V-PETL's table says 0.22M
    ("adaptformer", {}, 12 * (768 * 64 + 64 + 64 * 768 + 768)),  # 1.19M, as V-PETL's video table
    ("adaptformer", {"bottleneck": 8}, 12 * (768 * 8 + 8 + 8 * 768 + 768)),  # 0.16M, V-PETL's VTAB table
    ("vpt-deep", {"tokens": 50}, 12 * 50 * 768),
    ("vpt-shallow", {"tokens": 100}, 100 * 768),
])  # fmt: skip
def test_sizes_on_vit_base(vit_base, name, options, expected):
    model = copy.deepcopy(vit_base)
    create_method(name, options).apply(model)
    assert count_trainable(model) == expected


def _official_vpt(model, x, deep: bool):
    """KMnP/vpt's PromptedTransformer.forward (incorporate_prompt, forward_deep_prompt) on a timm ViT, in eval mode."""
    n = model.blocks[0].prompt_count
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    h = torch.cat((h[:, :1], model.blocks[0].prompt.expand(len(x), -1, -1), h[:, 1:]), dim=1)
    for i, block in enumerate(model.blocks):
        if i > 0 and deep:
            h = torch.cat((h[:, :1], block.prompt.expand(len(x), -1, -1), h[:, 1 + n :]), dim=1)
        h = Block.forward(block, h)
    return model.head(model.norm(h)[:, 0])


@pytest.mark.parametrize("name", ["vpt-deep", "vpt-shallow"])
def test_vpt_forward_is_the_official_one(name):
    model, _ = create_backbone("test_vit", RANDOM_WEIGHTS, 3, drop_path=0.1)
    method = create_method(name, {"tokens": 5})
    model = method.apply(model)
    perturb_trainable(model, 0.1)
    assert model.global_pool == "token"
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), _official_vpt(model, x, name == "vpt-deep"), atol=1e-6)
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in model.blocks)  # the encoder trains as in eval mode
    assert method.backbone_drop_path(model, 0.1) == 0.0
    with pytest.raises(AdaptError, match="prompts a ViT's token sequence"):
        create_method(name).apply(create_backbone("tf_efficientnet_lite0", RANDOM_WEIGHTS, 3, 64)[0])


def test_adaptformer_forward_is_the_official_one():
    model, _ = create_backbone("test_vit", RANDOM_WEIGHTS, 3)
    model = create_method("adaptformer").apply(model)
    perturb_trainable(model, 0.1)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for block in model.blocks:  # custom_modules.Block.forward, parallel option, Adapter without layer norm
            h = h + block.attn(block.norm1(h))
            adapter = block.adaptmlp
            adapt_x = adapter.up(F.relu(adapter.down(h))) * 0.1
            h = h + block.mlp(block.norm2(h)) + adapt_x
        reference = model.forward_head(model.norm(h))
        assert torch.allclose(model.eval()(x), reference, atol=1e-6)


def test_repadapter_is_the_official_grouped_conv_adapter():
    """RepAdapter.forward: conv_B(dropout(conv_A(x^T))) * s + x with Conv1d (groups 2), on tokens and on maps."""
    adapter = LinearAdapter(12, 8, 2, 0.5, 0.0).eval()
    perturb_trainable(adapter, 0.3)
    tokens = torch.randn(2, 5, 12)
    a = F.conv1d(tokens.transpose(1, 2), adapter.down.weight[:, :, None], adapter.down.bias)
    b = F.conv1d(a, adapter.up_weight[:, :, None], adapter.up_bias, groups=2)
    with torch.no_grad():
        assert torch.allclose(adapter(tokens), (b * 0.5).transpose(1, 2) + tokens, atol=1e-6)
        maps = torch.randn(2, 12, 3, 3)
        as_tokens = adapter(maps.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(maps.shape)
        assert torch.allclose(adapter(maps), as_tokens, atol=1e-6)
    with pytest.raises(AdaptError, match="groups must divide"):
        LinearAdapter(12, 8, 3, 1.0, 0.0)


class Interrupt(Exception):
    pass


def _stop_after_first_epoch(result):
    if result.epoch == 1:
        raise Interrupt


@pytest.mark.parametrize("name", ["vpt-deep", "vpt-shallow", "adaptformer", "repadapter", "dora", "loha", "lokr",
                                  "ia3", "oft", "boft", "vera"])
def test_train_save_load_eval_resume(tmp_path, name):
    job = TuneJob(method=name, backbone="test_vit", weights="random", image_size=32, limit=48)
    config = TrainConfig(epochs=2, batch_size=16, seed=1, lr=1e-2)
    straight = tune(job, config, tmp_path / "straight")
    with pytest.raises(Interrupt):
        tune(job, config, tmp_path / "resumed", on_epoch_end=_stop_after_first_epoch)
    assert (tmp_path / "resumed" / STATE_FILE).is_file()
    tune(job, config, tmp_path / "resumed", resume=True)
    a, b = (load_file(tmp_path / run / "adapter.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    adapted, meta = AdaptedModel.from_checkpoint(tmp_path / "straight" / "adapter.safetensors")
    assert meta.method == name
    trained = adapted.method.trainable_state(adapted.model)
    assert all(torch.equal(trained[k], a[k]) for k in a)
    assert evaluate(tmp_path / "straight" / "adapter.safetensors", limit=48).accuracy == pytest.approx(straight.test_acc)
    if not adapted.method.mergeable:
        with pytest.raises(AdaptError, match=f"method {name} cannot be merged: "):
            merge_checkpoint(tmp_path / "straight" / "adapter.safetensors", str(tmp_path / "hub"), "hub", False)
        assert not (tmp_path / "hub").exists()
