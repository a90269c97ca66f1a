"""SPT: budgets, sensitivity, allocation, sparse deltas, merging."""

import json

import pytest
import torch
from click.testing import CliRunner

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.cli import cli
from adapt.data import load_data
from adapt.merging.reparam import merge_adapted
from adapt.methods.spt.allocation import allocate, parse_budget
from adapt.methods.spt.sensitivity import task_sensitivity
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, tune
from conftest import perturb_trainable

QUICK = TuneJob(method="spt", image_size=48, limit=128,
                options={"rank": 4, "budget": "20k", "sensitivity_batches": 2, "sensitivity_batch_size": 16})  # fmt: skip


def spt_from(allocation, folder, classes, size, backbone, weights=None) -> AdaptedModel:
    """SPT built from an allocation, through its saved file (what --allocation takes)."""
    path = folder / f"allocation-{len(list(folder.glob('allocation-*')))}.json"
    allocation.save(path)
    return AdaptedModel.create("spt", classes, size, backbone, weights, {"allocation": str(path)})


def eligible(metadata) -> set[str]:
    return set(json.loads(metadata["lora_eligible"]))


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
    return task_sensitivity("digits", "tf_efficientnet_lite0", image_size=48, batches=2, batch_size=16, seed=0)


def test_sensitivity_and_allocation_are_deterministic(scores):
    again, metadata = task_sensitivity("digits", "tf_efficientnet_lite0", image_size=48, batches=2, batch_size=16, seed=0)
    assert all(torch.equal(scores[0][k], again[k]) for k in again)
    assert "classifier.weight" not in again and all(bool((v >= 0).all()) for v in again.values())
    a = allocate(scores[0], "20k", eligible(scores[1]))
    b = allocate(again, "20k", eligible(metadata))
    assert a == b


@pytest.mark.parametrize("budget", ["20k", "60k"])
def test_trained_count_meets_the_budget(scores, budget, tmp_path):
    allocation = allocate(scores[0], budget, eligible(scores[1]))
    target = parse_budget(budget, sum(t.numel() for t in scores[0].values()))
    assert 0.98 * target <= allocation.trainable_params() <= target
    adapted = spt_from(allocation, tmp_path, [str(i) for i in range(10)], 48, "tf_efficientnet_lite0")
    head = 1280 * 10 + 10
    assert adapted.parameter_counts()[0] - head == allocation.trainable_params()


@pytest.fixture(scope="module")
def spt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("spt")
    result = tune(QUICK, TrainConfig(epochs=1, batch_size=16, lr=1e-2), out)
    return out, result


def test_tune_spt_writes_allocation_and_keeps_unselected_entries(spt_run):
    """SPT trains on BatchNorm-folded weights; its merge puts them back in the backbone's own parametrization, so
    every entry it did not select comes back bitwise (a norm's shift also moves where its scale trained)."""
    out, result = spt_run
    assert (out / "allocation.json").is_file() and (out / "allocation.png").stat().st_size > 1000
    allocation = json.loads((out / "allocation.json").read_text())
    adapted, _ = AdaptedModel.from_checkpoint(out / "adapter.safetensors")
    fresh = AdaptedModel.create("linear", ["x"] * 10, 48, "tf_efficientnet_lite0").model.state_dict()
    merged, _ = merge_adapted(adapted)
    state = merged.state_dict()

    def moved(name: str) -> set[int]:
        return set((state[name] != fresh[name]).flatten().nonzero().flatten().tolist())

    for name, indices in allocation["unstructured"].items():
        allowed = set(indices) | (moved(name[: -len("bias")] + "weight") if name.endswith("bias") else set())
        assert moved(name) <= allowed, name  # only selected entries moved
        assert moved(name), name
    untouched = set(fresh) - set(allocation["unstructured"]) - set(allocation["structured"]) - set(allocation["vectors"])
    for name in untouched:
        partner = name[: -len("bias")] + "weight" if name.endswith("bias") else None
        if not name.startswith("classifier.") and "num_batches" not in name and not (partner and moved(partner)):
            assert torch.equal(state[name], fresh[name]), name


def test_spt_merges_exactly_on_lite0_and_a_tiny_vit(spt_run, tmp_path):
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
    adapted = spt_from(allocation, tmp_path, ["a", "b", "c"], 160, "test_vit", "random")
    perturb_trainable(adapted.model, 0.05)
    with torch.no_grad():
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
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())["trainable_params"]
    record = json.loads(runner.invoke(cli, ["info", str(tmp_path / "run" / "adapter.safetensors"), "--json"]).stdout)
    assert record["values"] == trained and record["index entries"] > 0  # SPT's sparse indices are not trained values
    assert f"{trained:,} values (+ {record['index entries']:,} index/buffer entries)" in info.output
    assert runner.invoke(cli, ["info", str(sens)]).stdout.startswith(f"{sens}: SPT sensitivity scores")
    assert runner.invoke(cli, ["info", str(alloc)]).stdout.startswith(f"{alloc}: SPT allocation")
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
    adapted = spt_from(allocation, tmp_path, ["a", "b", "c"], 160, "test_vit", "random")
    # the official sequential adapter is costed by the paper's formula (2 * rows * r + r + rows), as built
    modules = [m for m in adapted.model.modules() if type(m).__name__ == "StructuredDelta"]
    actual = sum(p.numel() for m in modules for p in m.parameters())
    assert actual == sum(allocation.costs[n] for n in allocation.structured)
    assert adapted.parameter_counts()[0] == allocation.trainable_params() + 64 * 3 + 3
    x, labels = torch.randn(4, 3, 160, 160), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        before = adapted.model.eval()(x)  # up-projections start at zero: the model is unchanged
    optimizer = torch.optim.AdamW([p for p in adapted.model.parameters() if p.requires_grad], lr=1e-2)
    adapted.model.train()
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


def test_batchnorm_folding_is_exact_and_recorded_and_merges_to_a_plain_timm_state_dict(tmp_path):
    """SPT on Lite0 trains on BN-folded weights: before any training the folded model equals the
    plain one (frozen statistics, to 1e-5); the checkpoint says so; the merge loads into timm strictly."""
    import timm

    from adapt.methods.spt.allocation import Allocation

    plain = AdaptedModel.create("linear", [str(i) for i in range(10)], 64, "tf_efficientnet_lite0").model.eval()
    allocation = Allocation(budget=20, rank=2, unstructured={"blocks.1.0.conv_dw.weight": list(range(0, 200, 10))})
    adapted = spt_from(allocation, tmp_path, [str(i) for i in range(10)], 64, "tf_efficientnet_lite0")
    assert adapted.method.options()["fold_batchnorm"] is True
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        reference = plain(x)  # 1e-5 relative to the largest logit (float32 rounding through ~50 folded layers)
        assert (adapted.model.eval()(x) - reference).abs().max() <= 1e-5 * reference.abs().max()
        stem = plain.bn1(plain.conv_stem(x))  # one folded pair
        assert (adapted.model.bn1(adapted.model.conv_stem(x)) - stem).abs().max() <= 1e-5 * stem.abs().max()
        assert float(adapted.model.bn1.weight.min()) == float(adapted.model.bn1.weight.max()) == 1.0  # folded
        perturb_trainable(adapted.model, 0.05)
        trained = adapted.model.eval()(x)
    adapted.save(tmp_path / "spt.safetensors")
    loaded, meta = AdaptedModel.from_checkpoint(tmp_path / "spt.safetensors")
    assert meta.method_options["fold_batchnorm"] is True
    merged, _ = merge_adapted(loaded)
    fresh = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        assert (fresh.eval()(x) - trained).abs().max() <= 1e-4


def test_a_checkpoint_from_before_folding_loads_unfolded():
    from adapt.methods import create_method

    old = create_method("spt", {"unstructured": {"conv_stem.weight": 3}})
    assert old.config.fold_batchnorm is False
    assert create_method("spt", {"budget": "1%"}).config.fold_batchnorm is True


def test_spt_owns_its_setup_and_tune_does_not_know_it():
    """The sensitivity pass and allocation are SPT's `prepare`; tuning.py and the sensitivity module no
    longer import each other."""
    import inspect

    import adapt.tuning
    from adapt.methods.spt import sensitivity

    source = inspect.getsource(adapt.tuning)
    assert "spt" not in source.lower() and "budget" not in source and "allocation" not in source
    assert "adapt.tuning" not in inspect.getsource(sensitivity)


def test_a_budget_sweep_scores_sensitivity_once_and_checks_every_budget_first(tmp_path, monkeypatch):
    """One sensitivity pass per task for every budget (the official code's), and a budget over the model's
    parameters refused before the first budget trains."""
    from adapt.methods.spt import sensitivity

    calls = []
    original = sensitivity.parameter_sensitivity
    monkeypatch.setattr(sensitivity, "parameter_sensitivity", lambda *a, **k: calls.append(1) or original(*a, **k))
    quick = ["--image-size", "32", "--limit", "48", "--epochs", "1", "--batch-size", "16", "--option", "sensitivity_batches=1"]
    runner = CliRunner()
    refused = runner.invoke(cli, ["tune", "--method", "spt", "--budget", "1k,99999M", *quick, "--out", str(tmp_path / "big")])
    assert refused.exit_code == 1 and "larger than the" in refused.stderr and "99999M" in refused.stderr
    assert not (tmp_path / "big" / "budget-1k" / "adapter.safetensors").exists()  # nothing trained first
    calls.clear()
    result = runner.invoke(cli, ["tune", "--method", "spt", "--budget", "1k,2k", *quick, "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # one pass for the task, every budget allocated from it
    assert "the scores of this task's previous budget" in result.output
    alone = runner.invoke(cli, ["tune", "--method", "spt", "--budget", "2k", *quick, "--out", str(tmp_path / "alone")])
    assert alone.exit_code == 0 and len(calls) == 2  # outside a sweep nothing is remembered
    swept = json.loads((tmp_path / "sweep" / "budget-2k" / "allocation.json").read_text())
    single = json.loads((tmp_path / "alone" / "allocation.json").read_text())
    assert swept == single  # the same allocation as a run of that budget alone
    assert single["image_size"] == 32 and single["source"].startswith("digits: the first")


def test_an_allocation_scored_at_another_size_is_said(tmp_path):
    """allocation.json records the image size of its scores; a run at another size says so."""
    runner = CliRunner()
    quick = ["--limit", "48", "--epochs", "1", "--batch-size", "16", "--option", "sensitivity_batches=1"]
    first = runner.invoke(cli, ["tune", "--method", "spt", "--budget", "1k", "--image-size", "48", *quick, "--out",
                                str(tmp_path / "a")])  # fmt: skip
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli, ["tune", "--method", "spt", "--allocation", str(tmp_path / "a" / "allocation.json"),
                                "--image-size", "32", *quick, "--out", str(tmp_path / "b")])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "was scored on 48px images" in again.output and "this run trains on 32px" in again.output
