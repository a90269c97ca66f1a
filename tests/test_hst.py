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
from adapt.tuning import TuneJob, tune

OFFICIAL_PARAMS = 772_140  # the official ViT_HSN on ViT-B/16 with 100 classes after freeze_vit(), counted
LIGHT = {"variant": "light"}


def test_paper_variant_on_vit_base_has_the_official_models_size():
    model, _ = create_backbone("vit_base_patch16_224", "random", num_classes=100)
    hst = create_method("hst").apply(model)
    trainable = count_trainable(hst)
    print(f"HST (paper) on vit_base_patch16_224, 100 classes: {trainable:,} trainable parameters")
    assert abs(trainable - OFFICIAL_PARAMS) <= 0.02 * OFFICIAL_PARAMS
    assert trainable == 772_140  # ours, pinned
    tuned_vit = sorted({n.split(".")[2] for n, p in hst.backbone.named_parameters() if p.requires_grad})
    assert tuned_vit == ["norm1", "norm2"] and len(hst.tap.meta_tokens) == 12


def test_light_variant_on_vit_base_is_about_the_papers_size():
    model, _ = create_backbone("vit_base_patch16_224", "random", num_classes=100)
    hst = create_method("hst", LIGHT).apply(model)
    head = sum(p.numel() for p in hst.side.head.parameters())
    without_head = count_trainable(hst) - head
    assert abs(without_head - 780_000) <= 0.10 * 780_000
    assert hst.tap.meta_tokens.shape == (12, 12, 768)
    assert not any(p.requires_grad for p in hst.backbone.parameters())


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
    hst = create_method("hst", LIGHT).apply(model)
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


@pytest.mark.parametrize("variant", ["paper", "light"])
@pytest.mark.parametrize("size", [(224, 224), (208, 144)])
def test_pyramid_shapes_on_a_vit(size, variant):
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True)
    hst = HSTModel(vit, HSTConfig(variant=variant), num_classes=5).eval()
    with torch.no_grad():
        levels = hst.side_features(torch.randn(2, 3, *size))
        assert hst(torch.randn(2, 3, *size)).shape == (2, 5)
    expected = [(2, w, -(-size[0] // s), -(-size[1] // s)) for w, s in zip((32, 48, 64, 72), (4, 8, 16, 32))]
    assert [tuple(level.shape) for level in levels] == expected


@pytest.mark.parametrize("variant", ["paper", "light"])
def test_pyramid_shapes_on_a_cnn_with_odd_sizes(variant):
    model, _ = create_backbone("tf_efficientnet_lite0", "random", num_classes=4)
    options = {"variant": variant, "widths": "16,16,24,24", "depths": [1, 1, 1, 1], "heads": [2, 2, 4, 4]}
    hst = create_method("hst", options if variant == "paper" else {k: v for k, v in options.items() if k != "heads"})
    hst = hst.apply(model).eval()
    with torch.no_grad():
        levels = hst.side_features(torch.randn(1, 3, 100, 70))
    assert [tuple(level.shape) for level in levels] == [(1, 16, 25, 18), (1, 16, 13, 9), (1, 24, 7, 5), (1, 24, 4, 3)]
    assert not hasattr(hst.tap, "meta_tokens")


def _tiny_vit(num_classes: int = 0):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=64, depth=4).eval()


def test_paper_block_equals_a_hand_written_reference():
    """The paper's side block and its reading, written out as the official forward does it:
    resize the ViT map, then bridge; global token = mean; [LN(bridge(meta)), global] as keys/values."""
    vit = _tiny_vit()
    hst = HSTModel(vit, HSTConfig(depths=(1, 1, 1, 1)), num_classes=3).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        readings = hst.tap(image)
        side = hst.side
        x = side.stem(image)  # (2, 32, 16, 16)
        tokens = x.flatten(2).transpose(1, 2)
        grid, meta = readings[0]
        bridge = side.bridges[0]
        fine = bridge(torch.nn.functional.interpolate(grid, size=(16, 16), mode="bilinear").flatten(2).transpose(1, 2))
        keys = torch.cat([side.meta_norms[0](bridge(meta)), fine.mean(1, keepdim=True)], 1)
        block = side.stages[0][0]
        heads = 2
        q = block.attn.q(block.norm1(tokens)).view(2, -1, heads, 16).transpose(1, 2)
        k = block.attn.k(keys).view(2, -1, heads, 16).transpose(1, 2)
        v = block.attn.v(keys).view(2, -1, heads, 16).transpose(1, 2)
        attended = ((q @ k.transpose(-2, -1)) / 4).softmax(-1) @ v
        expected = tokens + block.attn.proj(attended.transpose(1, 2).reshape(2, -1, 32))
        expected = expected + fine
        expected = expected + block.mlp(block.norm2(expected))
        expected = side.stage_norms[0](expected).transpose(1, 2).reshape(2, 32, 16, 16)
        ours = side.pyramid(image, readings)[0]
    assert (ours - expected).abs().max() < 1e-5


def test_meta_tokens_change_the_vits_patch_tokens_only_in_the_paper_variant():
    image = torch.randn(1, 3, 64, 64)
    for variant, changes in (("paper", True), ("light", False)):
        vit = _tiny_vit()
        with torch.no_grad():
            plain = vit.forward_intermediates(image, indices=[3], output_fmt="NCHW", intermediates_only=True)[0]
            hst = HSTModel(vit, HSTConfig(variant=variant, depths=(1, 1, 1, 1)), num_classes=3).eval()
            read = hst.tap(image)[-1].grid
        assert read.shape == plain.shape
        assert (read - plain).abs().max() > 1e-3 if changes else torch.equal(read, plain), variant


def test_gradient_reaches_the_tuned_layernorms_and_nothing_else_of_the_vit():
    vit = _tiny_vit(num_classes=3)
    before = {k: v.clone() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    hst = create_method("hst", {"depths": [1, 1, 1, 1]}).apply(vit)
    hst(torch.randn(2, 3, 64, 64)).pow(2).sum().backward()  # not .sum(): batch-normalized features sum to zero
    with_grad = {n for n, p in vit.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {f"blocks.{i}.{norm}.{kind}" for i in range(4) for norm in ("norm1", "norm2") for kind in ("weight", "bias")}
    assert all(p.grad is not None for p in hst.tap.meta_tokens)
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())  # nothing changed by a forward


def test_a_paper_checkpoint_round_trips_and_old_light_checkpoints_still_load(tmp_path):
    job = TuneJob(method="hst", backbone="test_vit", weights="random", image_size=32, limit=40,
                  options={"depths": [1, 1, 1, 1]})  # fmt: skip
    result = tune(job, TrainConfig(epochs=1, batch_size=8), tmp_path / "run")
    adapted, _ = AdaptedModel.from_checkpoint(tmp_path / "run" / "adapter.safetensors")
    assert adapted.method.config.variant == "paper"
    norms = [k for k in adapted.method.trainable_state(adapted.model) if k.startswith("backbone.blocks.")]
    assert norms and all(".norm1." in k or ".norm2." in k for k in norms)
    runner = CliRunner()
    evaluated = runner.invoke(cli, ["eval", str(tmp_path / "run" / "adapter.safetensors"), "--data", "digits", "--limit", "40"])
    assert evaluated.exit_code == 0 and f"{result.test_acc:.2%}" in evaluated.output, evaluated.output
    info = runner.invoke(cli, ["info", str(tmp_path / "run" / "adapter.safetensors")])
    assert "norm1 and norm2" in info.output
    old = {"widths": [32, 48, 64, 72], "depths": [3, 3, 3, 3], "meta_tokens": 12, "mlp_ratio": 1.0}  # before variants
    assert create_method("hst", old).config.variant == "light"


@pytest.fixture(scope="module")
def trained_hst(tmp_path_factory):
    """HST (feature-map variant) trained for two short epochs on digits with Lite0."""
    out = tmp_path_factory.mktemp("hst")
    job = TuneJob(method="hst", image_size=48, limit=300)  # the paper variant's blocks on feature maps
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
        create_method("hst", {"variant": "light", "widths": [30, 48, 64, 72]})
    with pytest.raises(AdaptError, match="multiples of their stage's heads"):
        create_method("hst", {"widths": [32, 50, 64, 72]})  # heads 2, 4, 8, 12
    with pytest.raises(AdaptError, match="needs 4 depths"):
        create_method("hst", {"depths": [3, 3]})
    with pytest.raises(AdaptError, match="variant must be one of"):
        create_method("hst", {"variant": "heavy"})
    model, _ = create_backbone("test_vit", "random", num_classes=3)
    with pytest.raises(AdaptError, match="cannot be merged"):
        create_method("hst").merge(create_method("hst").apply(model))


def test_the_paper_side_network_drops_paths_at_the_runs_rate_rising_over_its_blocks():
    """The official model gives the side network's 12 blocks DropPath at linspace(0, drop_path_rate, 12)
    (vit_hsn.py L222-233), on the attention and the MLP; eval mode drops nothing."""
    from timm.layers import DropPath

    adapted = AdaptedModel.create("hst", ["a", "b"], 32, "test_vit", "random", None, drop_path=0.2)
    blocks = [block for stage in adapted.model.side.stages for block in stage]
    rates = [block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.0 for block in blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 12).tolist())
    own = AdaptedModel.create("hst", ["a", "b"], 32, "test_vit", "random", {"side_drop_path": 0.05}, drop_path=0.2)
    assert own.model.side.stages[-1][-1].drop_path.drop_prob == pytest.approx(0.05)
    images = torch.randn(4, 3, 32, 32)
    adapted.model.eval()
    assert torch.equal(adapted.model(images), adapted.model(images))
    adapted.model.train()
    torch.manual_seed(0)
    first = adapted.model(images)
    assert not torch.allclose(first, adapted.model(images))  # stochastic depth acts in training
    none = AdaptedModel.create("hst", ["a", "b"], 32, "test_vit", "random")
    assert not any(isinstance(m, DropPath) for m in none.model.side.modules())
