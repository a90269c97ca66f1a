"""SPT as ziplab/SPT builds it: the sequential adapter (BlockSPTSeq), costs equal to what is built,
drop-path on the frozen ViT, and the sensitivity pass over the first training images in order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from adapt.adapted import AdaptedModel
from adapt.backbones import RANDOM_WEIGHTS, create_backbone, is_head_key
from adapt.methods import create_method
from adapt.methods.lora import lora_eligible_weights
from adapt.methods.spt.allocation import Allocation, allocate
from adapt.methods.spt.ranking import ranked
from adapt.methods.spt.sensitivity import parameter_sensitivity
from conftest import perturb_trainable

CLASSES = ["a", "b", "c"]
BACKBONES = {"test_vit": 160, "tf_efficientnet_lite0": 64}


def _allocated(backbone: str, folder, budget: int, **options) -> tuple[Allocation, AdaptedModel]:
    """Random scores on the real backbone, a budget spent with many structured modules, and SPT built from it."""
    model, _ = create_backbone(backbone, RANDOM_WEIGHTS, len(CLASSES), BACKBONES[backbone])
    method = create_method("spt", {"budget": budget})
    method._fold_batchnorms(model)  # SPT ranks the folded weights of a BatchNorm network
    generator = torch.Generator().manual_seed(0)
    raw = {k: torch.rand(p.shape, generator=generator) for k, p in model.named_parameters() if not is_head_key(model, k)}
    scores, eligible, always = ranked(model, raw, lora_eligible_weights(model))
    allocation = allocate(scores, budget, eligible, rank=4, alpha_threshold=2000, always=always, **options)
    allocation.save(folder / "allocation.json")
    adapted = AdaptedModel.create("spt", CLASSES, BACKBONES[backbone], backbone, RANDOM_WEIGHTS,
                                  {"allocation": str(folder / "allocation.json")})  # fmt: skip
    return allocation, adapted


def _adapters(names: list[str], folder, **options) -> AdaptedModel:
    """SPT adapters (the default form) on the named matrices of a tiny ViT, perturbed off their zero start."""
    allocation = Allocation(budget=10**6, rank=4, structured=names, costs={n: 1 for n in names}, structured_module="adapter")
    allocation.save(folder / "allocation.json")
    adapted = AdaptedModel.create("spt", CLASSES, 160, "test_vit", RANDOM_WEIGHTS,
                                  {"allocation": str(folder / "allocation.json"), **options})  # fmt: skip
    perturb_trainable(adapted.model, 0.1)
    return adapted


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("form", [{"structured_module": "lora"}, {"structured_module": "adapter"},
                                  {"structured_module": "adapter", "adapter_form": "parallel"}],
                         ids=["lora", "adapter", "adapter-parallel"])  # fmt: skip
def test_the_allocations_cost_is_the_trainable_count(backbone, form, tmp_path):
    allocation, adapted = _allocated(backbone, tmp_path, 60_000, **form)
    assert allocation.structured, "the case needs structured modules"
    model = adapted.model
    trained = sum(p.numel() for k, p in model.named_parameters() if p.requires_grad and not is_head_key(model, k))
    assert trained == allocation.trainable_params()


def test_the_sequential_adapter_maps_each_layers_output_as_block_spt_seq(tmp_path):
    """q, k, v and fc1/fc2: x -> x + up(gelu(down(x))) on the frozen linear's output (fc1's before the GELU);
    proj: proj(x) + adapter(x), in parallel."""
    names = ["blocks.0.attn.qkv.weight#q", "blocks.0.attn.qkv.weight#v", "blocks.0.attn.proj.weight",
             "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"]  # fmt: skip
    adapted = _adapters(names, tmp_path, structured_dropout=0.0, structured_drop_path=0.0)
    block = adapted.model.blocks[0].eval()

    def adapter(module, x):
        return module.up(F.gelu(module.down(x)))

    x = torch.randn(2, 5, block.attn.qkv.in_features)
    qkv = block.attn.qkv
    plain = F.linear(x, qkv.weight, qkv.bias)
    q, k, v = plain.chunk(3, -1)
    expected = torch.cat([q + adapter(qkv.structured["0"], q), k, v + adapter(qkv.structured["2"], v)], -1)
    assert (qkv(x) - expected).abs().max() <= 1e-5
    assert qkv.structured["0"].down.in_features == q.shape[-1]  # it sees q, not the block's input
    fc1 = block.mlp.fc1
    hidden = F.linear(x, fc1.weight, fc1.bias)
    assert fc1.structured["all"].down.in_features == fc1.out_features  # 3072 -> r -> 3072 on ViT-B
    assert (fc1(x) - (hidden + adapter(fc1.structured["all"], hidden))).abs().max() <= 1e-5
    proj = block.attn.proj
    assert (proj(x) - (F.linear(x, proj.weight, proj.bias) + adapter(proj.structured["all"], x))).abs().max() <= 1e-5
    assert proj.structured_dropout == 0.0 and not proj.structured["all"].sequential
    fc2 = block.mlp.fc2
    h = torch.randn(2, 5, fc2.in_features)
    out = F.linear(h, fc2.weight, fc2.bias)
    assert (fc2(h) - (out + adapter(fc2.structured["all"], out))).abs().max() <= 1e-5


def test_sequential_adapters_train_with_dropout_recomputed_exactly(tmp_path):
    adapted = _adapters(["blocks.0.attn.qkv.weight#k", "blocks.0.mlp.fc1.weight"], tmp_path, structured_dropout=0.5,
                        structured_drop_path=0.0)  # fmt: skip
    qkv = adapted.model.blocks[0].attn.qkv.train()
    x = torch.randn(2, 5, qkv.in_features)
    torch.manual_seed(3)
    out = qkv(x)
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    ours = {k: p.grad.clone() for k, p in qkv.structured.named_parameters()}
    from adapt.methods.spt.structured import dropout

    torch.manual_seed(3)  # the reference keeps the dropped rows for autograd
    plain = F.linear(x, qkv.weight, qkv.bias)
    dim = qkv.in_features
    module = qkv.structured["1"]
    rows = plain[..., dim : 2 * dim]
    reference = plain + torch.cat([torch.zeros(2, 5, dim), module.up(F.gelu(module.down(dropout(rows, 0.5)))),
                                   torch.zeros(2, 5, dim)], -1)  # fmt: skip
    qkv.zero_grad()
    (reference * weights).sum().backward()
    assert (out - reference).abs().max() <= 1e-5
    for name, parameter in qkv.structured.named_parameters():
        assert (ours[name] - parameter.grad).abs().max() <= 1e-5, name


def test_checkpoints_from_before_the_sequential_adapter_load_as_parallel():
    assert create_method("spt", {"budget": "1k", "structured_module": "adapter"}).config.adapter_form == "sequential"
    old = {"structured": ["blocks.0.mlp.fc1.weight"], "structured_module": "adapter", "fold_batchnorm": True}
    assert create_method("spt", old).config.adapter_form == "parallel"  # an allocation recorded without a form
    assert create_method("spt", {**old, "adapter_form": "sequential"}).config.adapter_form == "sequential"


def test_spt_runs_the_frozen_vit_with_drop_path_as_the_official_configs(tmp_path):
    allocation = Allocation(budget=10**6, rank=4, structured=["blocks.0.mlp.fc1.weight"], costs={"blocks.0.mlp.fc1.weight": 1})
    allocation.save(tmp_path / "allocation.json")
    options = {"allocation": str(tmp_path / "allocation.json")}
    model = AdaptedModel.create("spt", CLASSES, 160, "test_vit", RANDOM_WEIGHTS, options).model
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)  # timm's linear rule up to 0.1
    assert rates == sorted(rates) and type(model.blocks[-1].drop_path2).__name__ == "DropPath"
    off = AdaptedModel.create("spt", CLASSES, 160, "test_vit", RANDOM_WEIGHTS, {**options, "backbone_drop_path": 0}).model
    assert all(type(b.drop_path1).__name__ == "Identity" for b in off.blocks)
    x = torch.randn(2, 3, 160, 160)
    model.eval()
    assert torch.equal(model(x), model(x))  # only in training


def test_the_sensitivity_pass_takes_the_first_images_in_order():
    """The official pass: SequentialSampler over the training set, the first batches x batch_size images."""
    model, _ = create_backbone("test_vit", RANDOM_WEIGHTS, 3, 160)
    generator = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(10, 3, 160, 160, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    scores = parameter_sensitivity(model, images, batches=2, batch_size=3)
    reference = {k: torch.zeros_like(p) for k, p in model.named_parameters() if not k.startswith("head.")}
    model.train()
    for start in (0, 3):  # images 0..5, in order; the rest never seen
        model.zero_grad()
        batch = images.tensors[0][start : start + 3]
        F.cross_entropy(model(batch), images.tensors[1][start : start + 3]).backward()
        for k, p in model.named_parameters():
            if k in reference:
                reference[k] += p.grad**2
    for key in reference:
        assert torch.allclose(scores[key], reference[key], rtol=1e-4, atol=1e-12), key
    drawn = parameter_sensitivity(model, images, batches=2, batch_size=3, sample="random")
    assert any(not torch.allclose(drawn[k], scores[k]) for k in scores)
