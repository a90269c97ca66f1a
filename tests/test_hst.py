"""HST: parameter count, the meta-token path, pyramid shapes, training, checkpoints, merge refusal."""

from __future__ import annotations

import timm
import torch
from click.testing import CliRunner

import pytest
from adapt.adapted import AdaptedModel
from adapt.backbones import create_backbone
from adapt.cli import cli
from adapt.errors import AdaptError
from adapt.methods import count_trainable, create_method
from adapt.methods.hst import HSTConfig, HSTModel, meta_through_block
from adapt.train import TrainConfig
from adapt.tune import TuneJob, tune

PAPER_PARAMS = 780_000  # HST on ViT-B/16, the paper's count


def test_default_config_on_vit_base_is_about_the_papers_size():
    model, _ = create_backbone("vit_base_patch16_224", "random", num_classes=100)
    hst = create_method("hst").apply(model)
    head = sum(p.numel() for p in hst.side.head.parameters())
    without_head = count_trainable(hst) - head
    print(f"HST on vit_base_patch16_224: {without_head:,} trainable parameters without the head (+{head:,} head, 100 classes)")
    assert abs(without_head - PAPER_PARAMS) <= 0.10 * PAPER_PARAMS
    assert hst.tap.meta_tokens.shape == (12, 12, 768)


def test_meta_tokens_see_the_block_but_do_not_change_its_tokens():
    """Our meta path equals the meta rows of the frozen block run on [meta; tokens] with the
    tokens masked off the meta columns; the tokens' rows then equal the block's plain output."""
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    block = vit.blocks[3]
    tokens, meta = torch.randn(2, 197, 192), torch.randn(2, 5, 192)
    qkv = block.attn.qkv(block.norm1(tokens))
    allowed = torch.ones(202, 202, dtype=torch.bool)
    allowed[5:, :5] = False
    with torch.no_grad():
        joint = block(torch.cat([meta, tokens], 1), attn_mask=allowed)
        ours = meta_through_block(block, meta, qkv)
        assert (joint[:, :5] - ours).abs().max() < 1e-5
        assert (joint[:, 5:] - block(tokens)).abs().max() < 1e-5


def activation_bytes_saved_for_backward(model: torch.nn.Module, run) -> int:
    """Bytes autograd keeps for backward while `run()` executes, not counting the model's own
    (frozen) parameters, which it only references."""
    parameters = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in parameters:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total


def test_the_frozen_patch_path_stores_no_activations():
    """Only the meta rows are recorded for backward: far less than running the ViT on
    [meta; tokens] with gradients (what prompt tuning stores), and the backbone gets no grads."""
    model, _ = create_backbone("vit_tiny_patch16_224", "random", num_classes=3)
    hst = create_method("hst").apply(model)
    image = torch.randn(2, 3, 224, 224)
    meta = hst.tap.meta_tokens[0].expand(2, -1, -1)
    count = meta.shape[1]
    allowed = torch.ones(count + 197, count + 197, dtype=torch.bool)
    allowed[count:, :count] = False

    def prompted() -> None:
        tokens = torch.cat([meta, model.norm_pre(model._pos_embed(model.patch_embed(image)))], 1)
        for block in model.blocks:
            tokens = block(tokens, attn_mask=allowed)

    ours = activation_bytes_saved_for_backward(hst, lambda: hst.tap(image))
    assert 0 < ours < activation_bytes_saved_for_backward(hst, prompted) / 3
    hst(image).sum().backward()
    assert hst.tap.meta_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in hst.backbone.parameters())


@pytest.mark.parametrize("size", [(224, 224), (208, 144)])
def test_pyramid_shapes_on_a_vit(size):
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True)
    hst = HSTModel(vit, HSTConfig(), num_classes=5).eval()
    with torch.no_grad():
        levels = hst.side_features(torch.randn(2, 3, *size))
    expected = [(2, w, -(-size[0] // s), -(-size[1] // s)) for w, s in zip((32, 48, 64, 72), (4, 8, 16, 32))]
    assert [tuple(level.shape) for level in levels] == expected


def test_pyramid_shapes_on_a_cnn_with_odd_sizes():
    model, _ = create_backbone("tf_efficientnet_lite0", "random", num_classes=4)
    hst = create_method("hst", {"widths": "16,16,24,24", "depths": [1, 1, 1, 1]}).apply(model).eval()
    with torch.no_grad():
        levels = hst.side_features(torch.randn(1, 3, 100, 70))
    assert [tuple(level.shape) for level in levels] == [(1, 16, 25, 18), (1, 16, 13, 9), (1, 24, 7, 5), (1, 24, 4, 3)]
    assert not hasattr(hst.tap, "meta_tokens")


@pytest.fixture(scope="module")
def trained_hst(tmp_path_factory):
    """HST (feature-map variant) trained for two short epochs on digits with Lite0."""
    out = tmp_path_factory.mktemp("hst")
    job = TuneJob(method="hst", image_size=48, limit=300)
    result = tune(job, TrainConfig(epochs=2, batch_size=16, lr=3e-3), out)
    return out, result


def test_the_cnn_variant_learns_digits_and_leaves_the_backbone_bitwise_unchanged(trained_hst):
    out, result = trained_hst
    assert result.test_acc > 0.5  # chance is 0.1
    adapted, _ = AdaptedModel.from_checkpoint(out / "adapter.safetensors")
    fresh, _ = create_backbone("tf_efficientnet_lite0", None, num_classes=10, image_size=48)
    fresh.reset_classifier(0)
    trained = adapted.model.backbone.state_dict()
    assert all(torch.equal(tensor, trained[key]) for key, tensor in fresh.state_dict().items())


def test_eval_runs_the_side_network_and_merge_refuses_in_one_line(trained_hst):
    out, result = trained_hst
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["eval", str(out / "adapter.safetensors"), "--data", "digits", "--limit", "300"])
    assert evaluated.exit_code == 0, evaluated.output
    assert f"{result.test_acc:.2%}" in evaluated.output
    merged = runner.invoke(cli, ["merge", str(out / "adapter.safetensors"), "--out", str(out / "merged.safetensors")])
    assert merged.exit_code != 0
    assert merged.output.strip().count("\n") == 0
    assert "hst cannot be merged: its side network is a second branch" in merged.output
    assert not (out / "merged.safetensors").exists()


def test_bad_options_are_clear():
    with pytest.raises(AdaptError, match="multiples of 8"):
        create_method("hst", {"widths": [30, 48, 64, 72]})
    with pytest.raises(AdaptError, match="4 widths and 4 depths"):
        create_method("hst", {"depths": [3, 3]})
    model, _ = create_backbone("test_vit", "random", num_classes=3)
    with pytest.raises(AdaptError, match="cannot be merged"):
        create_method("hst").merge(create_method("hst").apply(model))
