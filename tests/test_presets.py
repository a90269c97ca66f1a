"""Paper presets: every value is an option of its command, --preset applies them (per VTAB-1k task), yours win."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml
from click.testing import CliRunner

from adapt.cli import cli
from adapt.cli.common import CONFIG_ALIASES
from adapt.presets import PRESETS, TASKS


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_value_goes_through_its_commands_own_checks(name):
    import click

    from adapt.cli.common import resolve_config

    preset = PRESETS[name]
    command = cli.commands[preset.command]
    assert set(preset.per_task) <= set(TASKS)
    assert set(preset.values) | {k for row in preset.per_task.values() for k in row} <= set(preset.sources)
    if preset.command == "soup":
        from adapt.merging.options import soup_options

        options, recipe = soup_options({}, None, preset.values)
        assert options.recipe == preset.values["recipe"] and recipe.grid()  # a valid recipe with its λ grid
        return
    for task in [None, *preset.per_task]:
        with click.Context(command, info_name=preset.command) as ctx:
            ctx.params = {p.name: p.get_default(ctx) for p in command.params}
            values = resolve_config(ctx, None, preset=(name, preset.values_for(task)))
        for key, value in preset.values_for(task).items():
            expected = tuple(value) if isinstance(value, list) else value
            got = values[CONFIG_ALIASES.get(key, key)]
            assert got == expected or str(got) == str(expected), (name, task, key)


def test_tune_with_a_preset_takes_each_vtab_tasks_own_values_and_yours_win(vtab_root, tmp_path):
    out = tmp_path / "ssf"
    result = run("tune", "--preset", "ssf-vtab", "--data", f"vtab:{vtab_root}", "--backbone", "test_vit",
                 "--weights", "random", "--image-size", "32", "--epochs", "1", "--cooldown-epochs", "1",
                 "--batch-size", "16", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preset ssf-vtab (svhn): yours instead of the preset's for --backbone, --image-size, --batch-size, --epochs, " \
           "--cooldown-epochs" in result.output
    svhn, eurosat = (yaml.safe_load((out / task / "config.yaml").read_text()) for task in ("svhn", "eurosat"))
    assert (svhn["lr"], svhn["weight_decay"], svhn["drop_path"]) == (1e-2, 5e-5, 0.0)  # SSF's per-task table
    assert (eurosat["lr"], eurosat["weight_decay"], eurosat["drop_path"]) == (3e-3, 5e-2, 0.2)
    assert svhn["preset"] == "ssf-vtab" and svhn["warmup_lr"] == 1e-7 and svhn["min_lr"] == 1e-8 and svhn["seed"] == 42
    assert svhn["epochs"] == 1 and svhn["cooldown_epochs"] == 1 and svhn["augment"] == "off"
    summary = json.loads((out / "svhn" / "summary.json").read_text())
    assert len(summary["history"]) == 2  # 1 epoch of cosine, then 1 of cooldown
    table = (out / "vtab.md").read_text()
    assert ("| task | final epoch | best over evaluations (test-selected) | paper (beside best over evaluations "
            "(test-selected)) |") in table  # SSF tests every epoch
    assert "| svhn |" in table and " 90.20 |" in table  # SSF's published svhn
    assert "| eurosat |" in table and "95.90" in table
    resumed = run("tune", "--out", out, "--resume")  # everything from each task's config.yaml
    assert resumed.exit_code == 0 and resumed.output.count("nothing to do") == 2, resumed.output


def test_a_preset_of_another_command_or_an_unknown_one_is_one_line(tmp_path):
    for args, message in ((["tune", "--preset", "ties"], "'ties' is for adapt soup; adapt tune takes: ssf-vtab"),
                          (["tune", "--preset", "ssf-vta"], "did you mean 'ssf-vtab'?"),
                          (["soup", "a", "b", "--preset", "ssf-vtab", "--out", tmp_path / "x"], "is for adapt tune"),
                          (["presets", "show", "tie"], "did you mean 'ties'"),
                          (["tune", "--preset", "", "--out", tmp_path / "x"], "'' is not a preset"),  # not silently none
                          (["tune", "--preset", " ssf-vtab", "--out", tmp_path / "x"],
                           "' ssf-vtab' is not a preset; did you mean 'ssf-vtab'?")):  # fmt: skip
        result = run(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "x").exists()


def test_presets_are_listed_and_shown_with_their_sources():
    listed = run("presets")
    assert listed.exit_code == 0 and all(name in listed.stdout for name in PRESETS)
    assert "Source: dongzelian/SSF" in " ".join(listed.stdout.split()) and "ssf" in listed.stdout
    shown = run("presets", "show", "hst-vtab")
    assert shown.exit_code == 0 and "AFeng-x/HST" in shown.stdout and "smallnorb_ele" in shown.stdout
    record = json.loads(run("presets", "show", "ties", "--json").stdout)
    assert record["values"]["density"] == 0.2 and record["values"]["scale_grid"].startswith("0.8,0.9")
    assert record["values"]["scale_grid"].endswith("2.4,2.5") and "ties-merging" in record["sources"]["density"]


def test_soup_with_a_preset_takes_its_recipe_and_yours_win(tmp_path):
    import torch
    from safetensors.torch import save_file

    from adapt.merging.tensors import TensorFile

    base = {"w": torch.zeros(4, 4), "b": torch.zeros(4)}
    save_file(base, tmp_path / "base.safetensors")
    for i in range(2):
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) for k, v in base.items()},
                  tmp_path / f"ft{i}.safetensors")  # fmt: skip
    result = run("soup", tmp_path / "ft0.safetensors", tmp_path / "ft1.safetensors", "--preset", "ties", "--scale", "1.5",
                 "--base", tmp_path / "base.safetensors", "--out", tmp_path / "ties.safetensors")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preset ties: yours instead of the preset's for --scale" in result.output
    record = json.loads(TensorFile(tmp_path / "ties.safetensors").metadata["soup"])
    assert record["recipe"] == "ties" and record["options"]["density"] == 0.2 and record["options"]["scale"] == 1.5


def test_warmup_from_warmup_lr_cosine_to_min_lr_then_cooldown_at_it(tmp_path):
    from adapt.optimization import Schedule

    schedule = Schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), "step", epochs=1,
                        updates_per_epoch=10, warmup=0.2, warmup_lr=0.1, min_lr=0.01)  # fmt: skip
    lrs = [schedule.lr] + [schedule.after_update() or schedule.lr for _ in range(25)]
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.1 + 0.9 * 0.5)  # warmup from warmup_lr
    assert lrs[5] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[10] == pytest.approx(0.01) and lrs[25] == pytest.approx(0.01)  # cooldown steps stay at min-lr
    out = tmp_path / "run"
    result = run("tune", "--method", "linear", "--image-size", "32", "--limit", "32", "--batch-size", "16", "--epochs", "2",
                 "--cooldown-epochs", "1", "--lr", "0.01", "--warmup", "0", "--min-lr", "0.001", "--log-with", "csv",
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    lrs = [float(r["value"]) for r in csv.DictReader((out / "log.csv").open()) if r["name"] == "train/lr"]
    assert len(lrs) == 6 and lrs[0] == pytest.approx(0.01) and lrs[4:] == pytest.approx([0.001, 0.001])
    bad = run("tune", "--lr", "0.001", "--min-lr", "0.01", "--limit", "8", "--out", tmp_path / "bad")
    assert bad.exit_code == 1 and "must not exceed --lr" in bad.stderr and not (tmp_path / "bad").exists()


def test_without_a_preset_each_method_keeps_its_own_weight_decay_and_never_decays_vectors(tmp_path):
    from adapt.adapted import AdaptedModel
    from adapt.optimization import parameter_groups

    for method, expected in (("lora", 1e-4), ("ssf", 0.05)):
        out = tmp_path / method
        result = run("tune", "--method", method, "--backbone", "test_vit", "--weights", "random", "--image-size", "32",
                     "--epochs", "1", "--limit", "16", "--batch-size", "16", "--out", out)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert yaml.safe_load((out / "config.yaml").read_text())["weight_decay"] == expected
    adapted = AdaptedModel.create("ssf", ["a", "b"], 32, "test_vit", "random")
    decayed, free = parameter_groups(adapted.model, 0.05)
    names = {id(p): n for n, p in adapted.model.named_parameters()}
    assert all(p.ndim >= 2 for p in decayed["params"]) and [names[id(p)] for p in decayed["params"]] == ["head.weight"]
    assert any("ssf" in names[id(p)] for p in free["params"]) and free["weight_decay"] == 0.0  # SSF's scales: none


# The official values, written out again from the repositories' scripts (../shared/recipes.md cites each file),
# so that a changed preset fails here. (lr, weight decay, drop-path) per VTAB-1k task.
SSF_SCRIPTS = {  # dongzelian/SSF : train_scripts/vit/vtab/<task>/train_ssf.sh
    "cifar": (5e-3, 5e-5, 0), "caltech101": (1e-3, 5e-2, 0.1), "dtd": (5e-3, 5e-5, 0), "oxford_flowers102": (5e-3, 5e-5, 0),
    "oxford_iiit_pet": (5e-3, 5e-5, 0), "svhn": (1e-2, 5e-5, 0), "sun397": (5e-3, 5e-5, 0),
    "patch_camelyon": (5e-3, 5e-5, 0), "eurosat": (3e-3, 5e-2, 0.2), "resisc45": (2e-3, 5e-5, 0.1),
    "diabetic_retinopathy": (5e-3, 5e-5, 0.2), "clevr_count": (2e-3, 5e-2, 0.1), "clevr_dist": (5e-2, 5e-2, 0.1),
    "dmlab": (5e-3, 5e-5, 0.1), "kitti": (1e-2, 5e-5, 0), "dsprites_loc": (1e-2, 5e-5, 0),
    "dsprites_ori": (5e-3, 5e-5, 0.2), "smallnorb_azi": (2e-2, 5e-5, 0.1), "smallnorb_ele": (5e-3, 5e-2, 0.2),
}  # fmt: skip
HST_SCRIPTS = {  # AFeng-x/HST : train_scripts/vit/vtab/<task>/train_s4.sh (the command lines)
    "cifar": (1e-2, 5e-4, 0), "caltech101": (1e-3, 5e-4, 0.1), "dtd": (1e-2, 5e-4, 0), "oxford_flowers102": (1e-3, 5e-5, 0),
    "oxford_iiit_pet": (1e-2, 5e-4, 0), "svhn": (1e-2, 5e-5, 0.1), "sun397": (1e-2, 5e-5, 0),
    "patch_camelyon": (5e-3, 5e-4, 0.1), "eurosat": (1e-3, 5e-4, 0.1), "resisc45": (5e-3, 5e-4, 0.0),
    "diabetic_retinopathy": (1e-3, 5e-5, 0.1), "clevr_count": (1e-3, 5e-4, 0.1), "clevr_dist": (5e-3, 5e-4, 0.1),
    "dmlab": (5e-3, 5e-4, 0.1), "kitti": (5e-3, 5e-2, 0.1), "dsprites_loc": (5e-3, 5e-4, 0.1),
    "dsprites_ori": (1e-3, 5e-4, 0.1), "smallnorb_azi": (1e-3, 5e-4, 0.1), "smallnorb_ele": (1e-3, 5e-2, 0.2),
}  # fmt: skip
SHARED = {
    # SSF and HST: 100 epochs + timm's 10 cooldown, warmup 10 of 100 from 1e-7, min-lr 1e-8, batch 64 (2 x 32), seed 42
    "ssf-vtab": {"epochs": 100, "cooldown_epochs": 10, "warmup": 0.1, "warmup_lr": 1e-7, "min_lr": 1e-8,
                 "batch_size": 64, "seed": 42, "augment": "off", "image_size": 224},
    "hst-vtab": {"epochs": 100, "cooldown_epochs": 10, "warmup": 0.1, "warmup_lr": 1e-7, "min_lr": 1e-8,
                 "batch_size": 64, "seed": 42, "augment": "off", "image_size": 224},
    # ziplab/SPT configs/vtab_supervised_spt_*.sh and train_spt.py defaults
    "spt-lora-vtab": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 100, "warmup": 0.1,
                      "warmup_lr": 1e-6, "min_lr": 1e-5, "seed": 0, "rank": 8},
    "spt-adapter-vtab": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 100, "warmup": 0.1,
                         "warmup_lr": 1e-6, "min_lr": 1e-5, "seed": 0, "rank": 8},
    # ZhangYuanhan-AI/NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh, supernet_train_prompt.py
    "lora-vtab": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 100, "rank": 8, "alpha": 8,
                  "dropout": 0.1, "drop_path": 0.1, "warmup_lr": 1e-6, "min_lr": 1e-5, "seed": 0},
    # V-PETL Bench run_vit_lora.sh, configs/model_lora/vtab/*.yaml, train_model_lora.py
    "lora-vpetl-vtab": {"rank": 8, "batch_size": 64, "epochs": 100, "drop_path": 0.1, "warmup_lr": 1e-6,
                        "min_lr": 1e-5, "seed": 42},
    # luogen1996/RepAdapter train.py, dataset.py; V-PETL run_vit_adaptformer.sh + train_model_adapter.py; NOAH's VPT script
    "repadapter-vtab": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "drop_last": True, "epochs": 100,
                        "warmup": 0.1, "warmup_lr": 1e-6, "min_lr": 1e-5, "drop_path": 0.1, "seed": 42,
                        "interpolation": "bicubic", "normalize": "imagenet", "eval_every": 10},
    "adaptformer-vtab": {"batch_size": 64, "drop_last": False, "epochs": 100, "drop_path": 0.1, "seed": 42,
                         "eval_every": 10, "eval_from": 90, "normalize": "imagenet"},
    "vpt-deep-vtab": {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "epochs": 100, "dropout": 0.1,
                      "normalize": "inception", "augment": "off", "drop_path": 0.1, "seed": 0},
    # ssundaram21/dreamsim configs/train_single_model_lora.yaml, training/train.py L180
    "dreamsim-nights": {"optimizer": "adam", "lr": 3e-4, "weight_decay": 0.0, "batch_size": 32, "epochs": 8,
                        "margin": 0.05, "seed": 1234},
    # ties-merging README / merge_utils.py; MergeLM merge_plms_glue.py
    "ties": {"recipe": "ties", "density": 0.2, "trim": "global"},
    "task-arithmetic": {"recipe": "task-arithmetic"},
    "dare": {"recipe": "dare", "drop": "0.1,0.3,0.5,0.7,0.9", "seed": 0},
}  # fmt: skip


REPADAPTER_SCALES = {  # luogen1996/RepAdapter : configs/repblock/<task>.yaml (scale)
    "cifar": 0.1, "caltech101": 5, "dtd": 1, "oxford_flowers102": 0.5, "oxford_iiit_pet": 0.1, "svhn": 10, "sun397": 0.1,
    "patch_camelyon": 1, "eurosat": 1, "resisc45": 5, "diabetic_retinopathy": 0.1, "clevr_count": 0.5, "clevr_dist": 0.1,
    "dmlab": 5, "kitti": 5, "dsprites_loc": 5, "dsprites_ori": 0.1, "smallnorb_azi": 10, "smallnorb_ele": 1,
}  # fmt: skip
ADAPTFORMER_SCRIPT = {  # V-PETL Bench ImageClassification/scripts/run_vit_adaptformer.sh (--lr, --wd)
    "cifar": (0.01, 1.0), "caltech101": (0.006, 0.35), "dtd": (0.0032, 0.04), "oxford_flowers102": (0.05, 0.11),
    "oxford_iiit_pet": (0.0007, 0.8), "svhn": (0.001, 0.005), "sun397": (0.0017, 0.01), "patch_camelyon": (0.0072, 0.002),
    "eurosat": (0.06, 0.001), "resisc45": (0.01, 0.01), "diabetic_retinopathy": (0.004, 0.0003),
    "clevr_count": (0.0033, 0.01), "clevr_dist": (0.0018, 0.005), "dmlab": (0.009, 0.1), "kitti": (0.0072, 0.0001),
    "dsprites_loc": (0.003, 0.001), "dsprites_ori": (0.01, 0.05), "smallnorb_azi": (0.0062, 0.005),
    "smallnorb_ele": (0.0011, 0.0005),
}  # fmt: skip


def test_repadapter_and_adaptformer_presets_equal_their_scripts():
    from adapt.cli.common import parse_options
    from adapt.methods import create_method

    for task in TASKS:
        repadapter = PRESETS["repadapter-vtab"].values_for(task)
        method = create_method("repadapter", parse_options(tuple(repadapter["option"])))
        assert (method.config.scale, method.config.dim, method.config.groups, method.config.variant) == (
            REPADAPTER_SCALES[task], 8, 2, "repblock"), task
        adaptformer = PRESETS["adaptformer-vtab"].values_for(task)
        assert (adaptformer["lr"], adaptformer["weight_decay"]) == ADAPTFORMER_SCRIPT[task], task
        # the yaml columns are LoRA's (train_model_adapter.py reads configs/model_lora)
        lora = PRESETS["lora-vpetl-vtab"].values_for(task)
        assert (adaptformer["augment"], adaptformer["label_smoothing"]) == (lora["augment"], lora["label_smoothing"])
        vpt = PRESETS["vpt-deep-vtab"].values_for(task)
        assert create_method("vpt-deep", parse_options(tuple(vpt["option"]))).config.encoder_drop_path


@pytest.mark.parametrize("name, scripts", [("ssf-vtab", SSF_SCRIPTS), ("hst-vtab", HST_SCRIPTS)])
def test_per_task_presets_equal_the_official_scripts(name, scripts):
    preset = PRESETS[name]
    for task, (lr, weight_decay, drop_path) in scripts.items():
        values = preset.values_for(task)
        assert (values["lr"], values["weight_decay"], values["drop_path"]) == (lr, weight_decay, drop_path), task
        assert values["epochs"] + values["cooldown_epochs"] == 110  # 100 + timm's cooldown
    assert set(scripts) == set(TASKS)


@pytest.mark.parametrize("name", list(SHARED))
def test_shared_values_equal_the_official_ones(name):
    values = PRESETS[name].values
    assert {key: values[key] for key in SHARED[name]} == SHARED[name]
    if name in ("ties", "task-arithmetic", "dare"):
        grid = [float(v) for v in values["scale_grid"].split(",")]
        official = {"ties": [round(0.8 + 0.1 * i, 1) for i in range(18)],  # np.arange(0.8, 2.51, 0.1)
                    "task-arithmetic": [round(0.1 * i, 1) for i in range(1, 11)],
                    "dare": [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]}[name]  # fmt: skip
        assert grid == official


@pytest.mark.parametrize("name", [name for name, preset in PRESETS.items() if preset.command == "tune"])
def test_a_shrunk_run_of_every_tune_preset_records_its_values(name, vtab_root, tmp_path):
    out = tmp_path / name
    shrink = ["--backbone", "test_vit", "--weights", "random", "--image-size", "32", "--epochs", "1", "--cooldown-epochs",
              "0", "--batch-size", "16", "--limit", "16"]  # fmt: skip
    if name.startswith("spt"):
        shrink += ["--budget", "1%"]
    result = run("tune", "--preset", name, "--data", f"vtab:{vtab_root}", *shrink, "--out", out)
    assert result.exit_code == 0, result.output
    preset = PRESETS[name]
    for task in ("svhn", "eurosat"):
        saved = yaml.safe_load((out / task / "config.yaml").read_text())
        for key, value in preset.values_for(task).items():
            if f"--{key.replace('_', '-')}" not in shrink and key != "option":
                assert saved[key] == value, (task, key)
    assert "paper" in (out / "vtab.md").read_text()


def test_the_best_test_accuracy_over_periodic_evaluations_is_a_second_figure(vtab_root, tmp_path):
    out = tmp_path / "run"
    result = run("tune", "--method", "linear", "--data", f"vtab:{vtab_root}", "--backbone", "test_vit", "--weights",
                 "random", "--image-size", "32", "--epochs", "3", "--eval-every", "2", "--batch-size", "16", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "svhn" / "summary.json").read_text())
    tested = {h["epoch"]: h["periodic_test_acc"] for h in summary["history"] if h["periodic_test_acc"] is not None}
    assert set(tested) == {2, 3}  # every 2 epochs, and the last
    assert tested[3] == summary["test_acc"] and summary["best_periodic_test_acc"] == max(tested.values())
    assert f"best test accuracy over the evaluations every 2 epochs: {summary['best_periodic_test_acc']:.2%}" in result.output
    table = (out / "vtab.md").read_text()
    assert "| task | final epoch | best over evaluations (test-selected) |" in table
    stored = json.loads((out / "vtab.json").read_text())
    assert stored["best_over_evaluations"]["tasks"]["svhn"] == summary["best_periodic_test_acc"]
    assert stored["final_epoch"]["tasks"]["svhn"] == summary["test_acc"]
    for column in ("final_epoch", "best_over_evaluations"):  # both means, of each column's own figures
        tasks = stored[column]["tasks"]
        assert stored[column]["plain_mean"] == pytest.approx(sum(tasks.values()) / len(tasks))
    assert stored["best_over_evaluations"]["plain_mean"] >= stored["final_epoch"]["plain_mean"]
    assert "final epoch" in result.output and "best over evaluations" in result.output


def test_augment_off_is_the_repos_direct_resize():
    import numpy as np
    import torch
    from PIL import Image

    from adapt.data.transforms import train_transform

    image = Image.fromarray((np.random.default_rng(0).random((20, 40, 3)) * 255).astype(np.uint8))  # 40 x 20, not square
    ours = train_transform(32, (0.5,) * 3, (0.5,) * 3, "off")(image)
    resized = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255  # Resize((S, S)), no crop
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - 0.5) / 0.5
    assert ours.shape == (3, 32, 32) and (ours - expected).abs().max() <= 1e-6


def test_normalize_is_recorded_and_used_again_by_eval(tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run"
    result = run("tune", "--method", "linear", "--backbone", "test_vit", "--weights", "random", "--image-size", "32",
                 "--epochs", "1", "--limit", "40", "--batch-size", "16", "--normalize", "imagenet", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    with safe_open(str(out / "adapter.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["mean"]) == [0.485, 0.456, 0.406]
    summary = json.loads((out / "summary.json").read_text())
    evaluated = run("eval", out, "--limit", "40", "--out", tmp_path / "eval.json")  # rebuilt with the recorded normalisation
    assert evaluated.exit_code == 0
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-9)


def test_an_spt_budget_sweep_runs_each_budget_and_keeps_the_best_on_test(vtab_root, tmp_path):
    out = tmp_path / "sweep"
    result = run("tune", "--method", "spt", "--budget", "1%,2%", "--data", f"vtab:{vtab_root}/svhn", "--backbone",
                 "test_vit", "--weights", "random", "--image-size", "32", "--epochs", "1", "--limit", "16",
                 "--batch-size", "16", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "sweep.json").read_text())
    runs = {budget: json.loads((out / f"budget-{budget}" / "summary.json").read_text()) for budget in ("1%", "2%")}
    assert sweep["final_epoch"] == {budget: summary["test_acc"] for budget, summary in runs.items()}
    assert sweep["chosen_by"] == "final_epoch" and sweep["chosen"] == max(sweep["final_epoch"], key=sweep["final_epoch"].get)
    assert "budget sweep (final epoch / best evaluation): 1%" in result.output
    assert runs["2%"]["trainable_params"] > runs["1%"]["trainable_params"]  # each run spent its own budget
    assert yaml.safe_load((out / "budget-2%" / "config.yaml").read_text())["budget"] == "2%"


def test_a_sweep_with_periodic_evaluations_keeps_the_budget_whose_best_evaluation_is_highest(tmp_path):
    from adapt.tuning import keep_best

    # as SPT's csv keeps max_accuracy per budget: 0.4M's final epoch is higher, 0.2M's best evaluation is
    chosen = keep_best(tmp_path, "budget", {"0.2M": 0.50, "0.4M": 0.60}, {"0.2M": 0.70, "0.4M": 0.65})
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert chosen == "0.2M" and sweep["chosen_by"] == "best_over_evaluations"
    assert sweep["best_over_evaluations"] == {"0.2M": 0.70, "0.4M": 0.65}
    assert keep_best(tmp_path, "budget", {"0.2M": 0.50, "0.4M": 0.60}) == "0.4M"  # no evaluations: the final epoch


def test_perceptual_init_takes_the_dreamsim_preset(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from adapt.backbones import create_backbone
    from adapt.data.triplets import make_fixture

    root = make_fixture(tmp_path / "nights", count=40, size=32)  # both test parts
    pretrained = tmp_path / "vit.safetensors"  # stands for DINO's weights, which the preset starts from
    save_file(create_backbone("test_vit", "random", num_classes=0, image_size=32)[0].state_dict(), pretrained)
    out = tmp_path / "p.safetensors"
    result = run("perceptual-init", "--preset", "dreamsim-nights", "--data", f"nights:{root}", "--backbone", "test_vit",
                 "--from", pretrained, "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preset dreamsim-nights: yours instead of the preset's for --backbone, --from, --batch-size, --epochs" in result.output
    assert "perceptual fine-tuning, lora" in result.output and "nights_total" in result.output
    with safe_open(str(out), framework="pt") as handle:
        record = yaml.safe_load(handle.metadata()["config"])
        summary = json.loads(handle.metadata()["perceptual_init"])
    assert record["preset"] == "dreamsim-nights" and (record["lr"], record["weight_decay"], record["seed"]) == (3e-4, 0.0, 1234)
    assert record["optimizer"] == "adam" and record["margin"] == 0.05 and record["epochs"] == 1
    assert (record["method"], record["rank"], record["alpha"], record["dropout"], record["targets"]) == ("lora", 16, 32, 0.2, "qkv$")
    options = summary["method_options"]
    assert (options["rank"], options["alpha"], options["dropout"], options["targets"]) == (16, 32, 0.2, "qkv$")
    total = summary["twoafc_after"]["nights_total"]
    parts = [summary["twoafc_after"][s] for s in ("test_imagenet", "test_no_imagenet")]
    assert total["triplets"] == sum(p["triplets"] for p in parts)
    assert total["score"] == pytest.approx(sum(p["score"] * p["triplets"] for p in parts) / total["triplets"])
    refused = run("perceptual-init", "--preset", "dreamsim-nights", "--data", f"nights:{root}", "--backbone", "test_vit",
                  "--image-size", "32", "--out", tmp_path / "no.safetensors")  # fmt: skip
    assert refused.exit_code == 1 and "has no pretrained weights here" in refused.stderr
    assert not (tmp_path / "no.safetensors").exists()


def test_increasing_randaugment_posterizes_to_black_at_full_magnitude_instead_of_failing():
    import numpy as np
    from PIL import Image
    from timm.data import auto_augment

    import adapt.data.transforms  # noqa: F401  (installs the posterize that keeps 0 bits)

    image = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # 4 - 4 = 0 bits kept
    assert not np.asarray(op(image)).any()  # black, as Pillow gave 0 bits before refusing them
    kept = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5)(image)  # 2 bits kept
    assert (np.asarray(kept) == (np.asarray(image) & 0b11000000)).all()


@pytest.mark.parametrize("name", [name for name, preset in PRESETS.items() if preset.paper and preset.paper.tasks])
def test_a_papers_mean_is_the_mean_of_the_per_task_figures_shown_beside_it(name):
    paper = PRESETS[name].paper
    assert len(paper.tasks) == len(TASKS)
    assert paper.plain_mean == pytest.approx(sum(paper.tasks.values()) / len(TASKS), abs=0.005)  # one source, rounded


@pytest.mark.parametrize("weights, tag", [
    ("vit_base_patch16_224.augreg_in21k.safetensors", "augreg_in21k"),
    ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", "augreg_in21k"),
    ("checkpoints/ViT-B_16.npz", "orig_in21k"),
    ("vit_base_patch16_224.orig_in21k.safetensors", "orig_in21k"),
    ("my_weights.safetensors", None),
    ("random", None),
])  # fmt: skip
def test_known_weights_are_recognised_by_name(weights, tag):
    from adapt.weights_identity import weights_tag

    assert weights_tag(weights) == tag


def test_a_preset_on_weights_it_was_not_published_with_says_so_in_one_line(tmp_path):
    import timm
    from timm.models._hub import save_config_for_hf

    from adapt.weights_identity import weights_tag

    folder = tmp_path / "hub"  # a hub folder says what it is in config.json
    folder.mkdir()
    save_config_for_hf(timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False), str(folder / "config.json"))
    assert weights_tag(folder) == "augreg_in21k"
    assert PRESETS["ssf-vtab"].weights_note(str(folder)) is None
    note = PRESETS["spt-lora-vtab"].weights_note(str(folder))
    assert "published with the original ImageNet-21k ViT-B_16.npz" in note and "they look like AugReg" in note
    assert "do not say which checkpoint" in PRESETS["lora-vtab"].weights_note("random")
    result = run("tune", "--preset", "ssf-vtab", "--weights", "random", "--backbone", "test_vit", "--image-size", "32",
                 "--epochs", "1", "--limit", "8", "--batch-size", "8", "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("note: preset ssf-vtab was published with AugReg ImageNet-21k") == 1


def test_a_per_task_preset_says_which_values_are_not_the_papers_for_an_unknown_task():
    from adapt.presets import PRESETS

    preset = PRESETS["ssf-vtab"]
    assert preset.missing_task_note("svhn") is None  # a task it has values for
    note = preset.missing_task_note("mytask")
    keys = sorted({key for values in preset.per_task.values() for key in values})
    assert note.startswith("preset ssf-vtab has no per-task values for task 'mytask'") and "not the paper's" in note
    assert all(key in note for key in keys)
    assert "this data (not a VTAB-1k task)" in preset.missing_task_note(None)
    assert PRESETS["ties"].missing_task_note("mytask") is None  # no per-task values at all
