import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from adapt.cli import cli

QUICK = ["--image-size", "32", "--epochs", "1", "--batch-size", "16"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, text):
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def folder_run(folder_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run("tune", "--data", f"folder:{folder_root}", "--method", "bitfit", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tune_writes_a_run_folder_and_reports(folder_run):
    out, output = folder_run
    assert "test accuracy" in output and "parameters (" in output
    assert {"adapter.safetensors", "train_state.safetensors", "metrics.jsonl", "summary.json"} <= {
        p.name for p in out.iterdir()
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["method"] == "bitfit" and 0 <= summary["test_acc"] <= 1
    import yaml

    from adapt.methods import create_method

    saved = yaml.safe_load((out / "config.yaml").read_text())  # the values used, not "the default"
    assert saved["lr"] == create_method("bitfit").default_lr and saved["image_size"] == 32
    assert (saved["precision"], saved["weights"], saved["augment"]) == ("fp32", "embedded", "on")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_eval_predict_info(folder_run, folder_root, tmp_path):
    out, _ = folder_run
    checkpoint = out / "adapter.safetensors"
    result = run("eval", checkpoint, "--split", "val", "--plot", tmp_path / "confusion.png")
    assert result.exit_code == 0 and "val accuracy" in result.output and "18 images" in result.output
    assert (tmp_path / "confusion.png").stat().st_size > 0
    saved = json.loads((out / "adapter.eval.json").read_text())
    entry = next(v for k, v in saved.items() if k.endswith(":val"))
    assert entry["images"] == 18 and f"{entry['accuracy']:.2%}" in result.output
    assert entry["top5"] is None and entry["loss"] > 0 and set(entry["per_class"]) == {"zero", "one", "two"}
    # the per-class accuracies are the top-1 accuracy's parts (6 val images per class)
    assert sum(entry["per_class"].values()) / 3 == pytest.approx(entry["accuracy"])
    image = next((folder_root / "test" / "two").iterdir())
    result = run("predict", checkpoint, image, "--top-k", "2")
    assert result.exit_code == 0
    assert result.output.count("%") == 2 and any(name in result.output for name in ("zero", "one", "two"))
    result = run("info", checkpoint)
    assert result.exit_code == 0 and "bitfit" in result.output and "tf_efficientnet_lite0" in result.output


def test_eval_keeps_one_result_per_checkpoint_and_limit(folder_run, tmp_path, monkeypatch):
    out, _ = folder_run
    for name in ("a", "b"):
        (tmp_path / f"{name}.safetensors").write_bytes((out / "adapter.safetensors").read_bytes())
    assert run("eval", tmp_path / "a.safetensors", "--split", "val").exit_code == 0
    assert run("eval", tmp_path / "a.safetensors", "--split", "val", "--limit", "5").exit_code == 0
    assert run("eval", tmp_path / "b.safetensors", "--split", "val").exit_code == 0
    first = json.loads((tmp_path / "a.eval.json").read_text())
    assert sorted(e["images"] for e in first.values()) == [5, 18]  # the --limit run is kept beside the whole split's
    assert [e["images"] for e in json.loads((tmp_path / "b.eval.json").read_text()).values()] == [18]
    monkeypatch.chdir(tmp_path)  # in the working folder, nothing is written unasked
    result = run("eval", "a.safetensors", "--split", "val", "--limit", "3")
    assert result.exit_code == 0 and "--out FILE writes them" in result.output
    assert not (tmp_path / "eval.json").exists() and len(json.loads((tmp_path / "a.eval.json").read_text())) == 2


def test_methods_table_lists_the_registry_and_is_kept_for_the_next_call(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPT_CACHE_DIR", str(tmp_path / "cache"))
    result = run("methods", "--backbone", "test_vit", "--num-classes", "3")
    assert result.exit_code == 0
    for name in ("ssf", "full", "linear", "bitfit"):
        assert name in result.output
    cached = list((tmp_path / "cache").glob("methods-*.json"))
    assert len(cached) == 1
    rows = json.loads(cached[0].read_text())
    ssf = next(r for r in rows if r["name"] == "ssf")
    assert f"{ssf['trainable']:,}" in result.output
    cached[0].write_text(json.dumps([{**r, "trainable": 7} if r["name"] == "ssf" else r for r in rows]))
    assert " 7 " in run("methods", "--backbone", "test_vit", "--num-classes", "3").output  # read back, not rebuilt
    cached[0].write_text("{not json")  # a broken cache is rebuilt
    again = run("methods", "--backbone", "test_vit", "--num-classes", "3")
    assert again.exit_code == 0 and f"{ssf['trainable']:,}" in again.output
    run("methods", "--backbone", "test_vit", "--num-classes", "4")  # another key
    assert len(list((tmp_path / "cache").glob("methods-*.json"))) == 2


def test_vtab_root_runs_every_task_and_prints_both_means(vtab_root, tmp_path):
    result = run("tune", "--data", f"vtab:{vtab_root}", "--method", "linear", *QUICK, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "svhn" in result.output and "eurosat" in result.output
    assert "plain mean of 2 tasks" in result.output and "mean of the 3 group means" in result.output
    assert (tmp_path / "svhn" / "adapter.safetensors").is_file()
    table = json.loads((tmp_path / "vtab.json").read_text())["final_epoch"]
    assert set(table["tasks"]) == {"svhn", "eurosat"}
    assert table["plain_mean"] == pytest.approx(sum(table["tasks"].values()) / 2) and table["group_mean"] is None
    assert "mean of the 3 group means | n/a" in (tmp_path / "vtab.md").read_text()


def test_bad_inputs_give_one_line(tmp_path, folder_run):
    out, _ = folder_run
    assert_one_line_error(run("tune", "--data", f"vtab:{tmp_path / 'nope'}"), "VTAB folder not found")
    assert_one_line_error(run("tune", "--data", "mnist"), "unknown data spec")
    assert_one_line_error(run("tune", "--option", "init_std"), "--option expects key=value")
    assert_one_line_error(run("tune", "--option", "rank=4", "--limit", "8", *QUICK, "--out", tmp_path),
                          "method ssf: unknown option 'rank'")  # fmt: skip
    assert_one_line_error(run("tune", "--backbone", "resnet_9000"), "unknown backbone")
    assert_one_line_error(run("eval", tmp_path / "none.safetensors"), "checkpoint not found")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((out / "adapter.safetensors").read_bytes()[:100])
    assert_one_line_error(run("info", broken), "truncated")
    bad_image = tmp_path / "bad.png"
    bad_image.write_text("not an image")
    assert_one_line_error(run("predict", out / "adapter.safetensors", bad_image), "unreadable image")
    usage = run("tune", "--method", "nope")
    assert usage.exit_code == 2 and "Invalid value for '--method'" in usage.output
    assert not (tmp_path / "adapter.safetensors").exists()


def test_every_command_has_help_with_an_example():
    result = subprocess.run([sys.executable, "-m", "adapt", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "tune" in result.stdout  # the real entry point
    for command in cli.commands:
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_lora_flags_reach_the_method(tmp_path):
    result = run("tune", "--method", "lora", "--rank", "2", "--alpha", "4", "--targets", "conv_head$", "--limit", "16",
                 *QUICK, "--out", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "LoRA rank 2 on 1 layers" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["run"]["method_options"] == {"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": "conv_head$",
                                                "qkv_blocks": None, "init": "lora"}
    assert_one_line_error(run("tune", "--method", "ssf", "--rank", "4"), "method ssf: unknown option 'rank'")


def test_method_flags_are_declared_options_of_their_methods():
    """Each convenience flag of `tune` is a field of the options dataclass of every method that
    declares it, and only of those (the flag is then just --option NAME=VALUE)."""
    import dataclasses

    from adapt.methods import METHOD_FLAGS, METHODS

    for name, flag in METHOD_FLAGS.items():
        for method in METHODS:
            fields = {f.name for f in dataclasses.fields(METHODS[method].config_class)}
            assert (name in fields) == (method in flag.methods), (name, method)
    help_text = run("tune", "--help").output
    assert "--budget VALUE" in help_text and "spt: Trainable parameters" in help_text


def test_the_cli_starts_without_torch():
    code = ("import sys, adapt.cli; heavy = [m for m in ('torch', 'timm', 'torchvision', 'sklearn', 'accelerate', 'peft') "
            "if m in sys.modules]; print(heavy)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_lazy_registries_name_their_classes():
    from adapt.heads import HEADS
    from adapt.merging import RECIPES
    from adapt.methods import METHODS

    assert all(METHODS[name].name == name for name in METHODS)
    assert all(HEADS[name].kind == name for name in HEADS)
    assert all(RECIPES[name].name == name for name in RECIPES)


def test_config_file_flags_win_and_resume_takes_the_saved_options(tmp_path):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text("method: bitfit\nimage-size: 32\nepochs: 1\nbatch_size: 16\nlimit: 16\nlr: 0.01\n")
    out = tmp_path / "run"
    result = run("tune", "--config", config, "--lr", "0.02", "--out", out)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "bitfit" and saved["lr"] == 0.02 and saved["image_size"] == 32  # the flag won
    resumed = run("tune", "--out", out, "--resume", "--workers", "1")  # everything else from config.yaml
    assert resumed.exit_code == 0 and "test accuracy" in resumed.output, resumed.output
    assert_one_line_error(run("tune", "--out", out, "--resume", "--lr", "0.5", "--epochs", "3"),
                          "cannot resume with other settings: --lr (was 0.02, now 0.5); drop them")  # more epochs may be asked
    assert_one_line_error(run("tune", "--out", out, "--resume", "--batch-size", "8"), "--batch-size (was 16, now 8)")
    config.write_text("methd: ssf\n")
    assert_one_line_error(run("tune", "--config", config, "--out", tmp_path / "other"), "did you mean 'method'")
    config.write_text("epochs: 0\n")
    assert_one_line_error(run("tune", "--config", config, "--out", tmp_path / "other"), "Invalid value for '--epochs': 0 is not in the range")


def test_resume_says_where_it_is_and_extends_a_finished_run(tmp_path):
    import csv

    import yaml

    out = tmp_path / "run"
    assert run("tune", "--method", "bitfit", *QUICK, "--limit", "32", "--log-with", "csv", "--out", out).exit_code == 0
    before = (out / "adapter.safetensors").read_bytes()
    result = run("tune", "--out", out, "--resume")
    assert result.exit_code == 0 and "has finished its 1 epochs: nothing to do" in result.output
    assert (out / "adapter.safetensors").read_bytes() == before and "test accuracy" in result.output
    result = run("tune", "--out", out, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2 of 2, extended from 1" in result.output and "epoch 2:" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2  # a later --resume knows the new plan
    summary = json.loads((out / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    lrs = [float(r["value"]) for r in csv.DictReader((out / "log.csv").open()) if r["name"] == "train/lr"]
    import math

    def cosine(update: int, length: int) -> float:  # timm's cosine without warmup, min_lr 0
        return 0.5 * (1 + math.cos(math.pi * min(update, length) / length))

    # stepped per epoch, no warmup epoch: the first plan (1 epoch) would give lr 0 from epoch 2 on; the new one
    # (2 epochs) continues its cosine from the saved position: 2 steps an epoch
    expected = (cosine(0, 1), cosine(0, 1), cosine(1, 2), cosine(1, 2))
    assert lrs == pytest.approx([lrs[0] * f for f in expected], rel=1e-6)
    assert "nothing to do" in run("tune", "--out", out, "--resume").output


def test_continual_and_perceptual_init_take_a_config_file(tmp_path):
    import yaml

    config = tmp_path / "cl.yaml"
    config.write_text("head: linear\nepochs: 1\nimage-size: 32\nlimit: 60\ninitial: 5\nincrement: 5\n")
    result = run("continual", "--config", config, "--out", tmp_path / "cl")
    assert result.exit_code == 0, result.output
    assert "naive ssf with a linear head" in result.output and "2 tasks of 5, 5 classes, 32px" in result.output
    saved = yaml.safe_load((tmp_path / "cl" / "config.yaml").read_text())
    assert saved["head"] == "linear" and saved["initial"] == 5 and saved["out"] == str(tmp_path / "cl")
    config.write_text("epocs: 1\n")
    for command in (["continual"], ["perceptual-init", "--data", "triplets:x.csv", "--out", tmp_path / "p.safetensors"]):
        assert_one_line_error(run(*command, "--config", config), "unknown option 'epocs' (did you mean 'epochs'?)")


@pytest.mark.parametrize("command", ["methods", "learners"])
def test_methods_and_learners_read_at_80_columns(command):
    import os

    from adapt.continual_learning import LEARNERS
    from adapt.methods import METHODS
    from adapt.methods.rows_cache import SHIPPED

    result = subprocess.run([sys.executable, "-m", "adapt", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "80"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines) and "…" not in result.stdout  # nothing cut with an ellipsis
    words = {word for line in lines for word in line.replace("│", " ").split()}
    words |= {word.rstrip(";") for word in words}
    summaries = ({name: learner.summary for name, learner in LEARNERS.items()} if command == "learners"
                 else {row["name"]: row["summary"] for row in json.loads(SHIPPED.read_text())})  # fmt: skip
    assert set(summaries) == set(LEARNERS if command == "learners" else METHODS)
    for name, summary in summaries.items():  # every description's words appear whole
        assert set(summary.split()) <= words, name
    if command == "methods":
        assert {"rank=8,", "--budget", "needed,", "variant=paper"} <= words


def test_config_takes_method_options_as_a_mapping_and_hugging_face_names(tmp_path):
    import yaml

    config = tmp_path / "hf.yaml"
    config.write_text(yaml.safe_dump({"method": "lora", "backbone": "test_vit", "weights": "random", "image_size": 32,
                                      "learning_rate": 0.002, "num_train_epochs": 1, "per_device_train_batch_size": 16,
                                      "limit": 16, "option": {"rank": 2, "targets": "qkv$"},
                                      "gradient_checkpointing": True}))  # fmt: skip
    out = tmp_path / "run"
    result = run("tune", "--config", config, "--out", out)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["lr"], saved["epochs"], saved["batch_size"], saved["grad_checkpointing"]) == (0.002, 1, 16, True)
    assert sorted(saved["method_options"]) == ['rank=2', 'targets="qkv$"']
    assert json.loads(run("info", out, "--json").stdout)["method"].startswith("lora")
    config.write_text("learning_rate: 0.1\nlr: 0.2\n")
    assert_one_line_error(run("tune", "--config", config, "--out", tmp_path / "x"), "'learning_rate' and 'lr' set the same option")
    config.write_text("num_train_epoch: 2\n")
    assert_one_line_error(run("tune", "--config", config, "--out", tmp_path / "x"), "did you mean")


def test_eval_of_a_limit_run_says_it_scores_the_whole_split(tmp_path):
    out = tmp_path / "run"
    assert run("tune", "--method", "linear", "--image-size", "32", "--limit", "24", "--epochs", "1", "--out", out).exit_code == 0
    whole = run("eval", out, "--split", "test")
    assert whole.exit_code == 0 and "note: the run used --limit 24" in whole.output and "--limit 24 gives" in whole.output
    limited = run("eval", out, "--split", "test", "--limit", "24")
    summary = json.loads((out / "summary.json").read_text())
    assert "note:" not in limited.output
    assert f"test accuracy {summary['test_acc']:.2%}" in limited.output  # the run's own seeded choice, its own figure


def test_a_vtab_preset_on_a_task_it_has_no_values_for_says_so(vtab_root, tmp_path):
    import shutil

    shutil.copytree(vtab_root / "svhn", tmp_path / "mytask")
    result = run("tune", "--preset", "ssf-vtab", "--data", f"vtab:{tmp_path / 'mytask'}", "--backbone", "test_vit",
                 "--weights", "random", "--image-size", "32", "--epochs", "1", "--cooldown-epochs", "0", "--batch-size",
                 "16", "--out", tmp_path / "run")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: preset ssf-vtab has no per-task values for task 'mytask'" in result.output
