"""Soups of adapters that are right for every method: LoRA through its folded weights or SVD, SPT, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.merging.adapter_soup import make_soup
from adapt.merging.recipes import TaskArithmetic, Uniform, Weighted, create_recipe
from adapt.merging.reparam import merge_adapted

TOLERANCE = 1e-5
CLASSES = ["a", "b", "c"]


def trained(path, method: str, seed: int, options: dict | None = None):
    """A checkpoint whose trainable tensors moved away from their init (as after training), on a random test ViT."""
    adapted = AdaptedModel.create(method, CLASSES, 160, "test_vit", "random", options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapted.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    adapted.save(path, {"seed": 0})
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return [trained(folder / f"lora{i}.safetensors", "lora", i, {"rank": 4, "alpha": 8}) for i in range(3)]


def merged_state(path) -> dict[str, torch.Tensor]:
    adapted, _ = AdaptedModel.from_checkpoint(path)
    return merge_adapted(adapted)[0].state_dict()


def test_a_lora_soup_is_the_mean_of_the_merged_models(loras, tmp_path):
    summary = make_soup(loras, tmp_path / "soup.safetensors", Uniform())
    soup, states = load_file(tmp_path / "soup.safetensors"), [merged_state(p) for p in loras]
    assert summary.kind == "folded adapters" and set(soup) == set(states[0])
    from adapt.merging.tensors import TensorFile

    record = json.loads(TensorFile(tmp_path / "soup.safetensors").metadata["soup"])  # the user's files, not the folded ones
    assert [i["path"] for i in record["ingredients"]] == [str(p) for p in loras] and "base" not in record
    for key, value in soup.items():
        if value.is_floating_point():
            assert (value - sum(s[key] for s in states) / 3).abs().max() <= TOLERANCE, key
    # the naive key-by-key mean of A's and B's is not this model: the bilinear term differs
    naive = {k: sum(load_file(str(p))[k] for p in loras) / 3 for k in load_file(str(loras[0]))}
    layer = next(k for k in naive if k.endswith("lora_A.default.weight"))[: -len(".lora_A.default.weight")]
    mean_of_products = sum(load_file(str(p))[f"{layer}.lora_B.default.weight"] @ load_file(str(p))[f"{layer}.lora_A.default.weight"]
                           for p in loras) / 3  # fmt: skip
    product_of_means = naive[f"{layer}.lora_B.default.weight"] @ naive[f"{layer}.lora_A.default.weight"]
    assert (mean_of_products - product_of_means).abs().max() > 1e-4


def test_task_arithmetic_over_loras_uses_the_backbone_as_base(loras, tmp_path):
    make_soup(loras, tmp_path / "ta.safetensors", TaskArithmetic(scale=0.5))
    soup, states = load_file(tmp_path / "ta.safetensors"), [merged_state(p) for p in loras]
    base, _ = AdaptedModel.create("linear", CLASSES, 160, "test_vit", "random").model, None
    base_state = base.state_dict()
    key = "blocks.0.attn.qkv.weight"
    expected = base_state[key] + 0.5 * sum(s[key] - base_state[key] for s in states)
    assert (soup[key] - expected).abs().max() <= TOLERANCE
    # the backbone has no head for these classes: the heads are averaged, not summed as task vectors
    assert (soup["head.weight"] - sum(s["head.weight"] for s in states) / len(states)).abs().max() <= TOLERANCE


def test_a_rank_soup_matches_peft_svd_combination(loras, tmp_path):
    from peft import get_peft_model

    from adapt.methods import create_method
    from adapt.methods.lora import target_layers

    summary = make_soup(loras, tmp_path / "svd.safetensors", Weighted([1.0, 1.0, 1.0]), rank=4)
    ours = load_file(tmp_path / "svd.safetensors")
    assert summary.svd_errors["overall"] >= 0 and "blocks.0.attn.qkv" in summary.svd_errors

    base = AdaptedModel.create("linear", CLASSES, 160, "test_vit", "random").model
    ours_lora = create_method("lora", {"rank": 4, "alpha": 8})
    ours_lora.targets = target_layers(base, None)
    config = ours_lora.peft_config()  # the same target layers as our checkpoints
    model = get_peft_model(base, config, adapter_name="a0")
    for i in (1, 2):
        model.add_adapter(f"a{i}", config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            for i, path in enumerate(loras):
                if f".a{i}." in name and "lora_" in name:
                    key = name.removeprefix("base_model.model.").replace(f".a{i}.", ".default.")
                    parameter.copy_(load_file(str(path))[key])
    model.base_model.add_weighted_adapter(["a0", "a1", "a2"], [1 / 3] * 3, "soup", combination_type="svd", svd_rank=4)
    checked = 0
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "soup" in module.lora_A:
            layer = name.removeprefix("base_model.model.")
            theirs = module.lora_B["soup"].weight @ module.lora_A["soup"].weight * module.scaling["soup"]
            mine = ours[f"{layer}.lora_B.default.weight"] @ ours[f"{layer}.lora_A.default.weight"]  # alpha = rank
            assert (mine - theirs).norm() <= 1e-5 * theirs.norm(), layer
            checked += 1
    assert checked >= 4
    back, meta = AdaptedModel.from_checkpoint(tmp_path / "svd.safetensors")  # a LoRA adapter again, of rank 4
    assert meta.method == "lora" and meta.method_options["rank"] == 4 and meta.method_options["alpha"] == 4.0


def test_spt_soups_fold_runs_that_chose_other_entries(tmp_path):
    from adapt.methods.spt.allocation import Allocation

    paths = []
    for seed, entries in ((0, [0, 5, 9]), (1, [1, 2, 3])):
        Allocation(budget=3, rank=2, unstructured={"blocks.0.mlp.fc1.weight": entries}).save(tmp_path / "a.json")
        adapted = AdaptedModel.create("spt", CLASSES, 160, "test_vit", "random", {"allocation": str(tmp_path / "a.json")})
        with torch.no_grad():
            for p in adapted.model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
        paths.append(tmp_path / f"spt{seed}.safetensors")
        adapted.save(paths[-1], {"seed": 0})
    make_soup(paths, tmp_path / "soup.safetensors", Uniform())
    soup, states = load_file(tmp_path / "soup.safetensors"), [merged_state(p) for p in paths]
    key = "blocks.0.mlp.fc1.weight"
    assert (soup[key] - (states[0][key] + states[1][key]) / 2).abs().max() <= TOLERANCE


def test_exact_adapters_stay_adapters_and_side_networks_say_so(tmp_path):
    ssf = [trained(tmp_path / f"ssf{i}.safetensors", "ssf", i) for i in range(2)]
    summary = make_soup(ssf, tmp_path / "ssf-soup.safetensors", Uniform())
    assert summary.kind == "adapters"
    AdaptedModel.from_checkpoint(tmp_path / "ssf-soup.safetensors")  # an adapter checkpoint that adapt reads
    hst = [trained(tmp_path / f"hst{i}.safetensors", "hst", i, {"widths": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "heads": [2, 2, 2, 2]})
           for i in range(2)]  # fmt: skip
    assert make_soup(hst, tmp_path / "hst-soup.safetensors", Uniform()).kind == "side networks"
    with pytest.raises(AdaptError, match="cannot give them"):
        make_soup(hst, tmp_path / "hst-ta.safetensors", create_recipe("task-arithmetic"))
    with pytest.raises(AdaptError, match="are not lora"):
        make_soup(ssf, tmp_path / "x.safetensors", Uniform(), rank=2)
    assert not (tmp_path / "hst-ta.safetensors").exists() and not (tmp_path / "x.safetensors").exists()
