"""SPT on ViTs as the released code does it: q, k and v are separate matrices (row blocks of timm's
fused qkv), head/cls_token/pos_embed/patch_embed are not ranked, cls_token trains whole and counts,
vectors under the 20% share train sparsely; structured modules carry Dropout and DropPath."""

import math

import timm
import torch

from adapt.adapted import AdaptedModel
from adapt.backbones import RANDOM_WEIGHTS, create_backbone
from adapt.merging.reparam import merge_adapted
from adapt.methods.lora import lora_eligible_weights
from adapt.methods.spt.allocation import Allocation, allocate
from adapt.methods.spt.structured import structured_cost
from adapt.methods.spt.ranking import ranked, split_fused
from adapt.methods.spt.structured import StructuredDelta
from conftest import perturb_trainable

CLASSES = ["a", "b", "c"]


def _spt(allocation: Allocation, folder, **options) -> AdaptedModel:
    allocation.save(folder / "allocation.json")
    return AdaptedModel.create("spt", CLASSES, 160, "test_vit", RANDOM_WEIGHTS,
                               {"allocation": str(folder / "allocation.json"), **options})  # fmt: skip


def _vit_scores(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.rand(p.shape, generator=generator) for k, p in model.named_parameters() if not k.startswith("head.")}


def test_ranking_splits_qkv_and_leaves_out_what_the_official_code_leaves_out():
    vit, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3)
    scores, eligible, always = ranked(vit, _vit_scores(vit), lora_eligible_weights(vit))
    dim = vit.embed_dim
    assert always == {"cls_token": dim}
    assert not [k for k in scores if k.startswith(("cls_token", "pos_embed", "patch_embed", "head"))]
    assert "blocks.0.attn.qkv.weight" not in scores
    for block in "qkv":
        assert scores[f"blocks.0.attn.qkv.weight#{block}"].shape == (dim, dim)
        assert scores[f"blocks.0.attn.qkv.bias#{block}"].shape == (dim,)
        assert f"blocks.0.attn.qkv.weight#{block}" in eligible
    assert "blocks.0.attn.qkv.bias#q" not in eligible and "blocks.0.mlp.fc1.weight" in eligible


def test_budget_arithmetic_by_hand():
    """Scores chosen so that the plan is known: LoRA on q of block 0, the whole norm1 weight, 3 sparse
    entries of a bias under the 20% share, cls_token; the exact rule fills the rest sparsely."""
    vit, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3)
    scores = {k: torch.zeros_like(v) for k, v in _vit_scores(vit).items()}
    scores, eligible, always = ranked(vit, scores, lora_eligible_weights(vit))
    dim, rank = vit.embed_dim, 2
    lora_q = structured_cost((dim, dim), rank, "lora")
    assert lora_q == rank * 2 * dim
    scores["blocks.0.attn.qkv.weight#q"].view(-1)[: math.ceil(lora_q / 10)] = 5.0  # reaches cost / alpha: structured
    scores["blocks.0.norm1.weight"][: math.ceil(dim / 5)] = 4.0  # reaches 20%: whole
    scores["blocks.1.attn.proj.bias"][:3] = 3.0  # 3 of dim < 20%: sparse
    scores["blocks.1.mlp.fc2.weight"].view(-1)[:50] = 2.0  # the next ranked: sparse fill
    budget = dim + lora_q + dim + 3 + 20
    allocation = allocate(scores, budget, eligible, rank=rank, alpha_threshold=10, always=always)
    assert allocation.structured == ["blocks.0.attn.qkv.weight#q"]
    assert allocation.vectors == ["cls_token", "blocks.0.norm1.weight"]
    assert allocation.unstructured["blocks.1.attn.proj.bias"] == [0, 1, 2]
    assert len(allocation.unstructured["blocks.1.mlp.fc2.weight"]) == 20
    assert allocation.trainable_params() == budget
    official = allocate(scores, budget, eligible, rank=rank, alpha_threshold=10, always=always, rule="official")
    # the released grid starts at 0.02M entries: for this small budget its closest plan is that first point
    assert official.rule == "official" and sum(official.selected.values()) == 20_000


def test_split_qkv_spt_merges_exactly_and_touches_only_its_rows(tmp_path):
    vit, _ = create_backbone("test_vit", RANDOM_WEIGHTS, num_classes=3)
    dim = vit.embed_dim
    allocation = Allocation(budget=10**6, rank=2, structured=["blocks.0.attn.qkv.weight#k"],
                            unstructured={"blocks.0.attn.qkv.weight#q": [0, 5, dim * dim - 1],
                                          "blocks.1.attn.qkv.bias#k": [1, 2]},
                            vectors=["cls_token", "blocks.0.attn.qkv.bias#v"],
                            costs={"blocks.0.attn.qkv.weight#k": 4 * dim},
                            sizes={"cls_token": dim, "blocks.0.attn.qkv.bias#v": dim})  # fmt: skip
    adapted = _spt(allocation, tmp_path)
    head = dim * 3 + 3
    assert adapted.parameter_counts()[0] == allocation.trainable_params() + head
    plain = create_backbone("test_vit", RANDOM_WEIGHTS, 3, 160, seed=0)[0].state_dict()  # the same weights, unadapted
    perturb_trainable(adapted.model, 0.1)
    with torch.no_grad():
        x = torch.randn(2, 3, 160, 160)
        before = adapted.model.eval()(x)
        merged, _ = merge_adapted(adapted)
        assert (merged(x) - before).abs().max() <= 1e-4
    state = merged.state_dict()
    weight = (state["blocks.0.attn.qkv.weight"] != plain["blocks.0.attn.qkv.weight"]).nonzero()
    q_rows = weight[weight[:, 0] < dim]
    assert sorted((q_rows[:, 0] * dim + q_rows[:, 1]).tolist()) == [0, 5, dim * dim - 1]
    assert not ((weight[:, 0] >= 2 * dim).any())  # v rows untouched; k rows carry the LoRA
    assert ((weight[:, 0] >= dim) & (weight[:, 0] < 2 * dim)).sum() > dim
    bias = (state["blocks.0.attn.qkv.bias"] != plain["blocks.0.attn.qkv.bias"]).nonzero().flatten()
    assert bias.min() >= 2 * dim and len(bias) == dim  # the v part, whole
    bias1 = (state["blocks.1.attn.qkv.bias"] != plain["blocks.1.attn.qkv.bias"]).nonzero().flatten().tolist()
    assert bias1 == [dim + 1, dim + 2]
    fresh = timm.create_model("test_vit", num_classes=3, img_size=160)
    fresh.load_state_dict(state, strict=True)


def test_structured_modules_have_the_papers_regularization_and_adapter(tmp_path):
    allocation = Allocation(budget=10**6, rank=4, structured=["blocks.0.mlp.fc1.weight"],
                            costs={"blocks.0.mlp.fc1.weight": 1}, structured_module="adapter")  # fmt: skip
    adapted = _spt(allocation, tmp_path)
    module = adapted.model.blocks[0].mlp.fc1.structured["all"]
    assert isinstance(module, StructuredDelta)
    assert adapted.model.blocks[0].mlp.fc1.structured_dropout == 0.1 and module.drop_path.drop_prob == 0.1
    assert isinstance(module.act, torch.nn.GELU) and module.down.bias is not None and module.up.bias is not None
    assert structured_cost((3072, 768), 8, "adapter") == 2 * 3072 * 8 + 8 + 3072  # the paper's formula
    quiet = _spt(allocation, tmp_path, structured_dropout=0.0, structured_drop_path=0.0)
    assert quiet.model.blocks[0].mlp.fc1.structured_dropout == 0.0


def test_vit_base_budgets_are_met_exactly():
    vit = timm.create_model("vit_base_patch16_224", num_classes=0)
    scores, eligible, always = ranked(vit, _vit_scores(vit), lora_eligible_weights(vit))
    assert always == {"cls_token": 768}
    for budget in (400_000, 1_000_000):
        allocation = allocate(scores, budget, eligible, rank=8, alpha_threshold=10, always=always)
        assert allocation.trainable_params() == budget, budget
        assert "cls_token" in allocation.vectors
    assert split_fused({"x.qkv.weight": torch.zeros(6, 2)})["x.qkv.weight#v"].shape == (2, 2)


def test_q_k_v_share_one_dropout_mask_the_projection_gets_none_and_backward_recomputes_it_exactly(tmp_path):
    names = ["blocks.0.attn.qkv.weight#q", "blocks.0.attn.qkv.weight#v", "blocks.0.attn.proj.weight"]
    allocation = Allocation(budget=10**6, rank=4, structured=names, costs={n: 1 for n in names})
    adapted = _spt(allocation, tmp_path, structured_drop_path=0.0, structured_dropout=0.5)
    perturb_trainable(adapted.model, 0.1)
    attn = adapted.model.blocks[0].attn
    assert attn.qkv.structured_dropout == 0.5 and attn.proj.structured_dropout == 0.0
    qkv = attn.qkv.train()
    x = torch.randn(2, 5, qkv.in_features, requires_grad=True)
    torch.manual_seed(3)
    out = qkv(x)
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    ours = {k: p.grad.clone() for k, p in qkv.structured.named_parameters()}

    torch.manual_seed(3)  # the reference: one mask for both modules, the dropped input kept by autograd
    from adapt.methods.spt.structured import dropout

    x2 = x.detach().clone().requires_grad_(True)
    dropped = dropout(x2, 0.5)
    dim = qkv.in_features
    assert 0.4 < float((dropped == 0).float().mean()) < 0.6
    reference = torch.nn.functional.linear(x2, qkv.weight, qkv.bias)
    q, v = qkv.structured["0"], qkv.structured["2"]
    reference = reference + torch.cat([q.up(q.down(dropped)) * q.scaling, torch.zeros(2, 5, dim),
                                       v.up(v.down(dropped)) * v.scaling], -1)  # fmt: skip
    qkv.zero_grad()
    (reference * weights).sum().backward()
    assert (out - reference).abs().max() <= 1e-5
    assert (x.grad - x2.grad).abs().max() <= 1e-5
    for name, parameter in qkv.structured.named_parameters():
        assert (ours[name] - parameter.grad).abs().max() <= 1e-5, name
    qkv.eval()
    assert torch.equal(qkv(x), qkv(x))  # no dropout outside training


def test_dropout_drops_its_share_and_keeps_the_mean():
    from adapt.methods.spt.structured import dropout

    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    for p in (0.1, 0.5):
        y = dropout(x, p)
        assert abs(float((y == 0).float().mean()) - p) < 0.005
        assert abs(float(y.mean()) - 1.0) < 0.01
        assert set(torch.unique(y).tolist()) == {0.0, float(y.max())}
    torch.manual_seed(1)
    first = dropout(x, 0.1)
    torch.manual_seed(1)
    assert torch.equal(first, dropout(x, 0.1))  # seeded by torch's generator


def test_lora_drop_path_on_the_rank_r_input_equals_drop_path_on_the_output(tmp_path):
    allocation = Allocation(budget=10**6, rank=4, structured=["blocks.0.mlp.fc1.weight"],
                            costs={"blocks.0.mlp.fc1.weight": 1})  # fmt: skip
    adapted = _spt(allocation, tmp_path, structured_drop_path=0.5, structured_dropout=0.0)
    perturb_trainable(adapted.model, 0.1)
    fc1 = adapted.model.blocks[0].mlp.fc1.train()
    module = fc1.structured["all"]
    x = torch.randn(8, 5, fc1.in_features)
    torch.manual_seed(4)
    ours = fc1(x)
    torch.manual_seed(4)
    reference = torch.nn.functional.linear(x, fc1.weight, fc1.bias) + module.drop_path(
        module.up(module.down(x)) * module.scaling)  # fmt: skip
    assert (ours - reference).abs().max() <= 1e-5
    dropped = (ours - torch.nn.functional.linear(x, fc1.weight, fc1.bias)).flatten(1).abs().amax(1) == 0
    assert 0 < int(dropped.sum()) < 8  # some samples lost the module's output, not all
