import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapt import AdaptError
from adapt.methods import create_method
from adapt.optimization import Schedule, parameter_groups
from adapt.train import TrainConfig
from adapt.train_state import STATE_FILE
from adapt.tuning import TuneJob, tune

QUICK = TuneJob(data="digits", method="ssf", image_size=32, limit=48)


def test_per_update_schedule_is_timms_cosine_with_warmup_inside_it():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = Schedule(optimizer, "step", epochs=2, updates_per_epoch=7, warmup=2 / 7)  # 14 updates, 4 of warmup
    lrs = [schedule.lr]
    for _ in range(16):
        schedule.after_update()
        lrs.append(schedule.lr)
    assert lrs[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75])  # linear from warmup_lr (0) over 4 updates
    assert lrs[7] == pytest.approx(0.5) and lrs[14] == pytest.approx(0.0) and lrs[16] == pytest.approx(0.0)
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 14)))  # the cosine runs over all 14 updates
    assert all(lrs[s] >= lrs[s + 1] for s in range(4, 16))


def test_weight_decay_only_on_matrices():
    from adapt.backbones import create_backbone

    model, _ = create_backbone(num_classes=10)
    create_method("ssf").apply(model)
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["classifier.weight"]
    assert any(names[id(p)].endswith("ssf.scale") for p in no_decay["params"])


class Interrupt(Exception):
    pass


def _stop_after_first_epoch(result):
    if result.epoch == 1:
        raise Interrupt


def test_resume_after_interruption_reaches_the_same_weights(tmp_path):
    config = TrainConfig(epochs=3, batch_size=16, seed=3)
    straight = tune(QUICK, config, tmp_path / "straight")
    with pytest.raises(Interrupt):
        tune(QUICK, config, tmp_path / "resumed", on_epoch_end=_stop_after_first_epoch)
    assert (tmp_path / "resumed" / STATE_FILE).is_file()
    resumed = tune(QUICK, config, tmp_path / "resumed", resume=True)
    a = load_file(tmp_path / "straight" / "adapter.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: same data order, optimizer and RNG state
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.test_acc == straight.test_acc
    metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3


def test_resume_refuses_a_changed_run(tmp_path):
    tune(QUICK, TrainConfig(epochs=1, batch_size=16), tmp_path)
    with pytest.raises(AdaptError, match="cannot resume .*batch_size"):  # more epochs would extend the run
        tune(QUICK, TrainConfig(epochs=2, batch_size=8), tmp_path, resume=True)
    with pytest.raises(AdaptError, match="nothing to resume"):
        tune(QUICK, TrainConfig(epochs=1), tmp_path / "empty", resume=True)


def test_gradient_accumulation_and_bf16_run(tmp_path):
    result = tune(QUICK, TrainConfig(epochs=1, batch_size=8, grad_accum=2, precision="bf16"), tmp_path)
    assert math.isfinite(result.history[0].train_loss) and 0.0 <= result.test_acc <= 1.0


def test_precision_comes_from_accelerate_unless_asked_and_is_recorded(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    tune(QUICK, TrainConfig(epochs=1, batch_size=16), tmp_path / "env")
    assert json.loads((tmp_path / "env" / "summary.json").read_text())["run"]["train"]["precision"] == "bf16"
    tune(QUICK, TrainConfig(epochs=1, batch_size=16, precision="fp32"), tmp_path / "asked")  # the flag wins
    assert json.loads((tmp_path / "asked" / "summary.json").read_text())["run"]["train"]["precision"] == "fp32"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    if torch.accelerator.is_available():
        return  # fp16 is fine on a GPU
    with pytest.raises(AdaptError, match="fp16 needs a GPU"):
        tune(QUICK, TrainConfig(epochs=1, precision="fp16"), tmp_path / "fp16")
    assert not (tmp_path / "fp16" / "adapter.safetensors").exists()


def test_two_processes_with_the_same_global_batch_train_as_one(tmp_path):
    """batch_size is the global batch: 2 processes x 4 take the same images per update as 1 x 8 and end on the
    same weights. 29 images: the last batch of 5 splits 3 + 2, weighted so that the mean is the batch's."""
    options = ["tune", "--method", "linear", "--image-size", "32", "--limit", "29", "--epochs", "2", "--batch-size", "8",
               "--lr", "0.05", "--warmup", "0"]  # fmt: skip
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"one": [sys.executable, "-m", "adapt"], "two": [str(torchrun), "--nproc_per_node", "2", "-m", "adapt"]}
    for name, launcher in runs.items():
        result = subprocess.run([*launcher, *options, "--out", str(tmp_path / name)], capture_output=True, text=True,
                                timeout=300, env=env)  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["run"]["processes"] == 2 and summary["batch"] == {"global": 8, "per_process": 4, "processes": 2}
    one, two = load_file(tmp_path / "one" / "adapter.safetensors"), load_file(tmp_path / "two" / "adapter.safetensors")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert moved < 1e-5, moved  # the same weights to float tolerance (reduction order differs)
    uneven = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "adapt", *options[:-4], "--batch-size", "7",
                             "--out", str(tmp_path / "uneven")], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert uneven.returncode == 1 and "--batch-size 7 is the global batch and must split evenly over 2 processes" in uneven.stderr
    assert not (tmp_path / "uneven" / "config.yaml").exists()


def test_a_run_saved_before_a_method_option_existed_resumes_at_its_default(tmp_path):
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import save_file

    job = TuneJob(data="digits", method="lora", image_size=32, limit=32)
    config = TrainConfig(epochs=2, batch_size=16)
    with pytest.raises(Interrupt):
        tune(job, config, tmp_path, on_epoch_end=_stop_after_first_epoch)
    path = tmp_path / STATE_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    run = _json.loads(metadata["run"])
    for later in ("qkv_blocks", "init"):  # as a state written before these LoRA options existed
        del run["method_options"][later]
    save_file(tensors, path, {**metadata, "run": _json.dumps(run)})
    assert [h.epoch for h in tune(job, config, tmp_path, resume=True).history] == [1, 2]
    run["method_options"]["init"] = "vpetl"  # a real change is still refused
    save_file(tensors, path, {**metadata, "run": _json.dumps(run)})
    with pytest.raises(AdaptError, match="cannot resume"):
        tune(job, TrainConfig(epochs=3, batch_size=16), tmp_path, resume=True)


def test_a_run_refused_before_its_first_epoch_leaves_nothing_that_blocks_the_corrected_one(tmp_path):
    """NaN backbone weights stop the run in its first step; its config.yaml must not make the rerun "a run"."""
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from adapt.backbones import create_backbone
    from adapt.cli import cli

    model, _ = create_backbone("test_vit", "random", 10, 32)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    state["norm.weight"][:] = float("nan")  # every feature NaN
    save_file(state, tmp_path / "nan.safetensors")
    quick = ["--backbone", "test_vit", "--image-size", "32", "--limit", "16", "--epochs", "1", "--out", str(tmp_path / "run")]
    refused = CliRunner().invoke(cli, ["tune", "--method", "linear", "--weights", str(tmp_path / "nan.safetensors"), *quick])
    assert refused.exit_code == 1 and "NaN" in refused.stderr, refused.output
    assert not (tmp_path / "run" / "config.yaml").exists()
    corrected = CliRunner().invoke(cli, ["tune", "--method", "linear", "--weights", "random", *quick])
    assert corrected.exit_code == 0, corrected.output
