"""LoRA on the q and v row blocks of a ViT's fused qkv (V-PETL Bench's LoRA): the forward, the count, the
released init, the merge, and what the lora-vpetl-vtab preset builds and preprocesses."""

import math

import pytest
import torch

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.methods import create_method
from adapt.presets import PRESETS
from conftest import perturb_trainable

VPETL = {"rank": 8, "alpha": 8, "targets": "qkv$", "qkv_blocks": "q,v", "init": "vpetl"}


def test_the_lora_vpetl_preset_builds_v_petls_count_on_vit_b16():
    values = PRESETS["lora-vpetl-vtab"].values
    options = {"rank": values["rank"], "alpha": values["alpha"], "targets": values["targets"],
               **dict(o.split("=", 1) for o in values["option"])}  # fmt: skip
    adapted = AdaptedModel.create("lora", [str(i) for i in range(100)], 224, "vit_base_patch16_224", "random", options)
    trained = adapted.parameter_counts()[0] - (768 * 100 + 100)  # less the 100-class head
    assert trained == 12 * 2 * (768 * 8 + 8 * 768) == 294_912  # ~0.29M: q and v of 12 blocks, rank 8
    assert "q+v of 12 fused qkv" in adapted.method.report()


def test_row_blocks_add_to_q_and_v_only_and_merge_exactly():
    adapted = AdaptedModel.create("lora", ["a", "b"], 32, "test_vit", "random", {**VPETL, "init": "lora"})
    perturb_trainable(adapted.model, 0.05)
    qkv = adapted.model.blocks[0].attn.qkv
    x = torch.randn(2, 5, qkv.in_features)
    dim = qkv.in_features
    with torch.no_grad():
        base = torch.nn.functional.linear(x, qkv.weight, qkv.bias)
        q, v = qkv.structured["q"], qkv.structured["v"]
        expected = base.clone()
        expected[..., :dim] += x @ q.down.weight.T @ q.up.weight.T  # unscaled: alpha = rank
        expected[..., 2 * dim :] += x @ v.down.weight.T @ v.up.weight.T
        adapted.model.eval()
        assert torch.allclose(qkv(x), expected, atol=1e-6)
        assert set(qkv.structured) == {"q", "v"}
        images = torch.randn(2, 3, 32, 32)
        before = adapted.model(images)
        merged = adapted.method.merge(adapted.model)
        assert type(merged.blocks[0].attn.qkv) is torch.nn.Linear and not hasattr(merged.blocks[0].attn.qkv, "structured")
        assert torch.allclose(merged(images), before, atol=1e-5)


def test_the_released_init_starts_q_nonzero_and_leaves_v_without_gradient():
    adapted = AdaptedModel.create("lora", ["a", "b"], 32, "test_vit", "random", VPETL)
    qkv = adapted.model.blocks[0].attn.qkv
    q, v = qkv.structured["q"], qkv.structured["v"]
    bound = 1 / math.sqrt(qkv.in_features)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert 0 < q.up.weight.abs().max() <= 1 / math.sqrt(8) and 0 < q.down.weight.abs().max() <= bound
    assert not v.up.weight.any() and not v.down.weight.any()
    adapted.model.train()
    adapted.model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert q.up.weight.grad.abs().sum() > 0 and q.down.weight.grad.abs().sum() > 0
    assert not v.up.weight.grad.any() and not v.down.weight.grad.any()  # the dead branch, as released


@pytest.mark.parametrize("options, message", [
    ({"qkv_blocks": "q,x"}, "must name some of q, k, v"),
    ({"qkv_blocks": ""}, "must name some of q, k, v"),
    ({"init": "vpetl"}, "give qkv_blocks"),
])  # fmt: skip
def test_bad_block_options_are_refused(options, message):
    with pytest.raises(AdaptError, match=message):
        create_method("lora", options)


def test_row_blocks_need_a_fused_qkv_and_do_not_export_to_peft(tmp_path):
    from adapt.peft_format import export_peft

    with pytest.raises(AdaptError, match="qkv_blocks needs a ViT's fused qkv"):
        AdaptedModel.create("lora", ["a", "b"], 32, "tf_efficientnet_lite0", "random", {"qkv_blocks": "q,v"})
    adapted = AdaptedModel.create("lora", ["a", "b"], 32, "test_vit", "random", VPETL)
    adapted.save(tmp_path / "qv.safetensors")
    with pytest.raises(AdaptError, match="row blocks of the fused qkv"):
        export_peft(tmp_path / "qv.safetensors", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_resize_crop_and_bilinear_test_images_as_v_petl(tmp_path):
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode, Resize

    from adapt.data.transforms import eval_transform, train_transform

    pipeline = train_transform(32, (0.5,) * 3, (0.5,) * 3, "rand-m9-mstd0.5-inc1", crop="resize")
    first = pipeline.transforms[0]
    assert isinstance(first, Resize) and first.size == (32, 32) and first.interpolation == InterpolationMode.BICUBIC
    image = Image.fromarray((np.random.default_rng(0).random((20, 40, 3)) * 255).astype(np.uint8))
    ours = eval_transform(32, (0.5,) * 3, (0.5,) * 3, "bilinear")(image)
    resized = np.asarray(image.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - 0.5) / 0.5
    assert (ours - expected).abs().max() <= 1e-6
