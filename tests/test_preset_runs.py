"""A preset run steps as its repository's trainer does: the learning rate of every step equals timm's
CosineLRScheduler driven by that trainer's loop, and it tests at the epochs the trainer tests."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner
from timm.scheduler import CosineLRScheduler

from adapt.cli import cli
from adapt.presets import PRESETS
from adapt.train_config import TrainConfig

SHRINK = ["--backbone", "test_vit", "--weights", "random", "--image-size", "32", "--log-with", "csv"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def official_lrs(lr: float, epochs: int, cooldown: int, steps_per_epoch: int, warmup_epochs: int, warmup_lr: float,
                 min_lr: float, step_after_epoch) -> list[float]:  # fmt: skip
    """Each step's rate in the official loop: timm's scheduler built as create_scheduler builds it, the rate
    read at every step, and `step_after_epoch(scheduler, epoch)` called after each (0-based) epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs, lr_min=min_lr, warmup_t=warmup_epochs,
                                  warmup_lr_init=warmup_lr)  # fmt: skip
    rates = []
    for epoch in range(epochs + cooldown):
        rates += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        step_after_epoch(scheduler, epoch)
    return rates


def logged_lrs(out) -> list[float]:
    with (out / "log.csv").open(newline="") as file:
        return [float(row["value"]) for row in csv.DictReader(file) if row["name"] == "train/lr"]


def epochs_tested(out) -> set[int]:
    summary = json.loads((out / "summary.json").read_text())
    return {h["epoch"] for h in summary["history"] if h["periodic_test_acc"] is not None}


def test_ssf_vtab_steps_timms_schedule_after_each_epoch_with_epoch_plus_one(vtab_root, tmp_path):
    out = tmp_path / "ssf"
    # 20 train800val200 images (limit), global batch 8, drop_last: 2 steps an epoch; 10 epochs + 2 of cooldown
    result = run("tune", "--preset", "ssf-vtab", "--data", f"vtab:{vtab_root}/svhn", *SHRINK, "--limit", "20",
                 "--batch-size", "8", "--epochs", "10", "--cooldown-epochs", "2", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    values = PRESETS["ssf-vtab"].values_for("svhn")
    expected = official_lrs(values["lr"], 10, 2, 2, 1, values["warmup_lr"], values["min_lr"],
                            lambda scheduler, epoch: scheduler.step(epoch + 1))  # SSF train.py L709  # fmt: skip
    assert logged_lrs(out) == pytest.approx(expected, rel=1e-9)
    assert expected[0] == values["warmup_lr"] and expected[-1] == values["min_lr"]  # epoch 0 at warmup-lr, cooldown at min
    trained_at = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert trained_at == pytest.approx(expected[1::2], rel=1e-9)  # metrics.jsonl: the rate each epoch trained at
    assert epochs_tested(out) == set(range(1, 13))  # every epoch, as SSF's train.py


@pytest.mark.parametrize("name", ["spt-lora-vtab", "lora-vtab", "lora-vpetl-vtab"])
def test_epoch_lagged_presets_run_one_epoch_behind(name, vtab_root, tmp_path):
    out = tmp_path / name
    extra = ["--budget", "1%"] if name.startswith("spt") else []
    result = run("tune", "--preset", name, "--data", f"vtab:{vtab_root}/svhn", *SHRINK, *extra, "--limit", "16",
                 "--batch-size", "8", "--epochs", "12", "--seed", "0", "--out", out)  # seed 0: eval --limit's choice  # fmt: skip
    assert result.exit_code == 0, result.output
    values = PRESETS[name].values_for("svhn")
    expected = official_lrs(values.get("lr", 1e-3), 12, 0, 2, 1, values["warmup_lr"], values["min_lr"],
                            lambda scheduler, epoch: scheduler.step(epoch))  # fmt: skip
    assert expected[:4] == [values["warmup_lr"]] * 4  # epochs 0 and 1 both at warmup-lr
    assert logged_lrs(out) == pytest.approx(expected, rel=1e-9)
    if name == "lora-vpetl-vtab":  # its bilinear test resize is recorded, and eval uses it again
        from safetensors import safe_open

        with safe_open(str(out / "adapter.safetensors"), framework="pt") as handle:
            assert handle.metadata()["interpolation"] == "bilinear"
        summary = json.loads((out / "summary.json").read_text())
        evaluated = run("eval", out, "--limit", "16", "--out", tmp_path / "eval.json")
        assert evaluated.exit_code == 0, evaluated.output
        assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-9)


@pytest.mark.parametrize("name, tested", [
    ("spt-lora-vtab", {1, 11, 21, 31, 41, 51, 61, 71, 81, *range(91, 101)}),  # epoch % 10 == 0 or >= 90, 0-based
    ("lora-vtab", {1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100}),  # epoch % 10 == 0 or the last, 0-based
    ("lora-vpetl-vtab", set(range(10, 101, 10))),  # ep % 10 == 9, 0-based
    ("ssf-vtab", set(range(1, 111))),  # every epoch, cooldown included
])  # fmt: skip
def test_each_preset_tests_at_its_trainers_epochs(name, tested):
    values = PRESETS[name].values
    config = TrainConfig(**{key: values[key] for key in ("epochs", "eval_every", "eval_from", "eval_last",
                                                         "cooldown_epochs") if key in values})  # fmt: skip
    assert {epoch for epoch in range(1, config.total_epochs + 1) if config.tests_at(epoch)} == tested
    assert len(tested) == {"spt-lora-vtab": 19, "lora-vtab": 11, "lora-vpetl-vtab": 10, "ssf-vtab": 110}[name]


def test_spt_scores_sensitivity_on_train800_and_records_the_drop_path_that_runs(vtab_root, tmp_path):
    from adapt.data import load_data

    data = load_data(f"vtab:{vtab_root}/svhn", 32, (0.5,) * 3, (0.5,) * 3)
    assert len(data.train) == 60 and len(data.tuning_images) == 40  # train800val200 trains, train800 is scored
    lines = (vtab_root / "svhn" / "train800.txt").read_text().split()
    assert [str(p) for p, _ in data.tuning_images.items][:2] == [str(vtab_root / "svhn" / lines[0]), str(vtab_root / "svhn" / lines[2])]
    out = tmp_path / "spt"
    result = run("tune", "--method", "spt", "--budget", "1%", "--data", f"vtab:{vtab_root}/svhn", *SHRINK, "--epochs",
                 "1", "--limit", "16", "--batch-size", "16", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["drop_path"] == 0.1  # SPT's backbone_drop_path runs


def test_no_weight_decay_on_what_the_vit_lists(tmp_path):
    from adapt.adapted import AdaptedModel
    from adapt.optimization import parameter_groups

    adapted = AdaptedModel.create("full", ["a", "b"], 32, "test_vit", "random")
    decayed, free = parameter_groups(adapted.model, 0.1)
    names = {id(p): n for n, p in adapted.model.named_parameters()}
    free_names = {names[id(p)] for p in free["params"]}
    assert {"cls_token", "pos_embed"} <= free_names  # timm's no_weight_decay(), as SPT's build_optimizer skips
    assert all(names[id(p)] not in ("cls_token", "pos_embed") for p in decayed["params"])
    assert "head.weight" in {names[id(p)] for p in decayed["params"]}
