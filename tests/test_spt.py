"""SPT: budgets, sensitivity, allocation, sparse deltas, merging."""

import json

import pytest
import torch
from click.testing import CliRunner

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.allocation import allocate, parse_budget
from adapt.cli import cli
from adapt.data import load_data
from adapt.merge.reparam import merge_adapted
from adapt.methods.spt import SPT
from adapt.sensitivity import allocate_from_scores, parameter_sensitivity
from adapt.train import TrainConfig
from adapt.tune import TuneJob, tune

QUICK = TuneJob(method="spt", options={"rank": 4}, image_size=48, limit=128, budget="20k", sensitivity_batches=2,
               sensitivity_batch_size=16)


def test_budget_parsing_and_errors():
    assert parse_budget("400000", 10**6) == 400_000
    assert parse_budget("0.4M", 10**6) == 400_000
    assert parse_budget("50k", 10**6) == 50_000
    assert parse_budget("1%", 3_000_000) == 30_000
    with pytest.raises(AdaptError, match="larger than the 1,000 backbone parameters"):
        parse_budget("2k", 1000)
    with pytest.raises(AdaptError, match="is zero"):
        parse_budget("0", 1000)
    for bad in ("lots", "1.2.3M", "-5", "5G"):
        with pytest.raises(AdaptError, match="cannot read budget"):
            parse_budget(bad, 1000)


def test_allocation_rules_on_hand_made_scores():
    scores = {
        "a.weight": torch.zeros(10, 10),  # matrix, LoRA-eligible
        "b.weight": torch.zeros(10, 10),  # matrix, not eligible
        "c.bias": torch.zeros(10),  # vector
    }
    scores["a.weight"][:4] = 5.0  # 40 sensitive entries: rank-1 LoRA costs 20 -> threshold 2 -> structured
    scores["b.weight"][0, :3] = 4.0  # 3 entries: sparse
    scores["c.bias"][:3] = 3.0  # 3 of 10 = 30% >= 20%: whole vector
    allocation = allocate(scores, budget=40, structured_eligible={"a.weight"}, rank=1, alpha_threshold=10)
    assert allocation.structured == ["a.weight"] and allocation.vectors == ["c.bias"]
    assert allocation.unstructured["b.weight"][:3] == [0, 1, 2]
    assert allocation.trainable_params() == 40  # 20 + 10 + 10 (3 selected + 7 filled from the next ranked)


@pytest.fixture(scope="module")
def scores():
    return parameter_sensitivity(QUICK, batches=2, batch_size=16, seed=0)


def test_sensitivity_and_allocation_are_deterministic(scores):
    again, _ = parameter_sensitivity(QUICK, batches=2, batch_size=16, seed=0)
    assert all(torch.equal(scores[0][k], again[k]) for k in again)
    assert "classifier.weight" not in again and all(bool((v >= 0).all()) for v in again.values())
    a = allocate_from_scores(*scores, "20k")
    b = allocate_from_scores(again, scores[1], "20k")
    assert a == b


@pytest.mark.parametrize("budget", ["20k", "60k"])
def test_trained_count_meets_the_budget(scores, budget):
    allocation = allocate_from_scores(*scores, budget)
    target = parse_budget(budget, sum(t.numel() for t in scores[0].values()))
    assert 0.98 * target <= allocation.trainable_params() <= target
    adapted = AdaptedModel.create("spt", [str(i) for i in range(10)], 48, "tf_efficientnet_lite0",
                                  options=SPT.options_for(allocation))  # fmt: skip
    head = 1280 * 10 + 10
    assert adapted.parameter_counts()[0] - head == allocation.trainable_params()


@pytest.fixture(scope="module")
def spt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spt")
    result = tune(QUICK, TrainConfig(epochs=1, batch_size=16, lr=1e-2), out)
    return out, result


def test_tune_spt_writes_allocation_and_keeps_unselected_entries(spt_run):
    out, result = spt_run
    assert (out / "allocation.json").is_file() and (out / "allocation.png").stat().st_size > 1000
    allocation = json.loads((out / "allocation.json").read_text())
    adapted, _ = AdaptedModel.from_checkpoint(out / "adapter.safetensors")
    fresh = AdaptedModel.create("linear", ["x"] * 10, 48, "tf_efficientnet_lite0").model.state_dict()
    merged, _ = merge_adapted(adapted)
    state = merged.state_dict()
    for name, indices in allocation["unstructured"].items():
        changed = (state[name] != fresh[name]).flatten().nonzero().flatten().tolist()
        assert set(changed) <= set(indices), name  # only selected entries moved
        assert changed, name
    untouched = set(fresh) - set(allocation["unstructured"]) - set(allocation["structured"]) - set(allocation["vectors"])
    for name in untouched:
        if not name.startswith("classifier.") and "running" not in name and "num_batches" not in name:
            assert torch.equal(state[name], fresh[name]), name


def test_spt_merges_exactly_on_lite0_and_a_tiny_vit(spt_run):
    out, _ = spt_run
    adapted, _ = AdaptedModel.from_checkpoint(out / "adapter.safetensors")
    images = torch.stack([x for x, _ in list(load_data("digits", 48, adapted.mean, adapted.std).test)[:64]])
    with torch.no_grad():
        before = adapted.model.eval()(images)
        merged, _ = merge_adapted(adapted)
        assert (merged(images) - before).abs().max() <= 1e-4

    vit = AdaptedModel.create("linear", ["a", "b", "c"], 160, "test_vit", "random").model
    vit_scores = {k: torch.rand(p.shape, generator=torch.Generator().manual_seed(0))
                  for k, p in vit.named_parameters() if not k.startswith("head.")}  # fmt: skip
    from adapt.methods.lora import lora_eligible_weights

    allocation = allocate(vit_scores, 30_000, lora_eligible_weights(vit), rank=4, alpha_threshold=10)
    adapted = AdaptedModel.create("spt", ["a", "b", "c"], 160, "test_vit", "random", SPT.options_for(allocation))
    adapted.method.set_allocation(adapted.model, allocation)
    with torch.no_grad():
        for p in adapted.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 3, 160, 160)
        before = adapted.model.eval()(x)
        merged, _ = merge_adapted(adapted)
        assert (merged(x) - before).abs().max() <= 1e-4
    assert allocation.structured and allocation.unstructured


def test_cli_sensitivity_allocate_and_tune_from_allocation(tmp_path):
    runner = CliRunner()
    sens = tmp_path / "s.safetensors"
    result = runner.invoke(cli, ["sensitivity", "--image-size", "32", "--batches", "2", "--batch-size", "8", "--out", str(sens)])
    assert result.exit_code == 0, result.output
    alloc = tmp_path / "alloc.json"
    result = runner.invoke(cli, ["allocate", str(sens), "--budget", "1%", "--out", str(alloc), "--plot", str(tmp_path / "a.png")])
    assert result.exit_code == 0 and "of 33,710 budget" in result.output, result.output
    assert (tmp_path / "a.png").is_file()
    result = runner.invoke(cli, ["tune", "--method", "spt", "--allocation", str(alloc), "--image-size", "32", "--limit", "32",
                                 "--epochs", "1", "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 0, result.output
    info = runner.invoke(cli, ["info", str(tmp_path / "run" / "adapter.safetensors")])
    assert "SPT: LoRA rank 8" in info.output
    bad = runner.invoke(cli, ["allocate", str(sens), "--budget", "10M", "--out", str(alloc), "--overwrite"])
    assert bad.exit_code == 1 and "larger than the" in bad.output
    bad = runner.invoke(cli, ["tune", "--method", "spt", "--limit", "8"])
    assert bad.exit_code == 1 and "needs --budget" in bad.output


def test_spt_with_adapters_trains_reloads_and_refuses_to_merge(tmp_path):
    from adapt.methods.lora import lora_eligible_weights

    vit = AdaptedModel.create("linear", ["a", "b", "c"], 160, "test_vit", "random").model
    vit_scores = {k: torch.rand(p.shape, generator=torch.Generator().manual_seed(0))
                  for k, p in vit.named_parameters() if not k.startswith("head.")}  # fmt: skip
    allocation = allocate(vit_scores, 30_000, lora_eligible_weights(vit), rank=4, structured_module="adapter")
    adapted = AdaptedModel.create("spt", ["a", "b", "c"], 160, "test_vit", "random", SPT.options_for(allocation))
    adapted.method.set_allocation(adapted.model, allocation)
    assert adapted.parameter_counts()[0] == allocation.trainable_params() + 64 * 3 + 3
    x, labels = torch.randn(4, 3, 160, 160), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        before = adapted.model.eval()(x)  # up-projections start at zero: the model is unchanged
    optimizer = torch.optim.AdamW([p for p in adapted.model.parameters() if p.requires_grad], lr=1e-2)
    adapted.method.set_train_mode(adapted.model)
    torch.nn.functional.cross_entropy(adapted.model(x), labels).backward()
    optimizer.step()
    adapted.save(tmp_path / "spt.safetensors")
    loaded, _ = AdaptedModel.from_checkpoint(tmp_path / "spt.safetensors")
    with torch.no_grad():
        after = adapted.model.eval()(x)
        assert not torch.equal(after, before) and torch.equal(loaded.model.eval()(x), after)
    with pytest.raises(AdaptError, match="method spt cannot be merged"):
        merge_adapted(loaded)
    assert "adapters rank 4" in loaded.method.report()
