"""--log-with: per-step loss and lr and per-epoch metrics reach TensorBoard (read back from its
event file, offline) and the CSV log, and agree with metrics.jsonl."""

import csv
import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from timm.scheduler import CosineLRScheduler

from adapt.methods import create_method
from adapt.train import TrainConfig
from adapt.tracking import CSV_FILE, TENSORBOARD_DIR
from adapt.tuning import TuneJob, tune

QUICK = TuneJob(data="digits", method="ssf", image_size=32, limit=48)


def _csv_rows(path):
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["step", "name", "value"]
    return [(int(step), name, float(value)) for step, name, value in rows[1:]]


def test_tensorboard_and_csv_log_every_step_and_epoch(tmp_path):
    config = TrainConfig(epochs=2, batch_size=16, log_with="tensorboard,csv")
    result = tune(QUICK, config, tmp_path)
    steps = sum(h.steps for h in result.history)
    assert steps == 6  # 48 images, batch 16, 2 epochs

    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, steps + 1))
    lrs = [e.value for e in events.Scalars("train/lr")]
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=create_method("ssf").default_lr)
    timm = CosineLRScheduler(reference, t_initial=config.epochs, warmup_t=round(config.warmup * config.epochs))
    expected = []
    for epoch in range(config.epochs):  # the default steps per epoch, as timm's train.py: step(epoch + 1) after it
        expected += [reference.param_groups[0]["lr"]] * (steps // config.epochs)
        timm.step(epoch + 1)
    assert lrs == pytest.approx(expected)
    eval_acc = events.Scalars("epoch/eval_acc")
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in eval_acc] == [3, 6]
    assert [e.value for e in eval_acc] == pytest.approx([m["eval_acc"] for m in jsonl])

    rows = _csv_rows(tmp_path / CSV_FILE)
    csv_losses = [(s, v) for s, n, v in rows if n == "train/loss"]
    assert [s for s, _ in csv_losses] == list(range(1, steps + 1))
    assert [v for _, v in csv_losses] == pytest.approx([e.value for e in losses])
    # the epoch mean of the step losses is the epoch's train loss (equal batches)
    assert sum(v for s, v in csv_losses if s <= 3) / 3 == pytest.approx(jsonl[0]["train_loss"])
    assert math.isclose(max(v for _, n, v in rows if n == "train/lr"), max(lrs), rel_tol=1e-6)


def test_resumed_run_drops_the_steps_its_interrupted_epoch_logged(tmp_path):
    config = TrainConfig(epochs=2, batch_size=16, log_with="csv")
    tune(QUICK, TrainConfig(epochs=2, batch_size=16, log_with="csv"), tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop(result):
        raise Interrupt

    with pytest.raises(Interrupt):
        tune(QUICK, config, tmp_path / "resumed", on_epoch_end=stop)
    log = tmp_path / "resumed" / CSV_FILE
    with open(log, "a", newline="") as file:  # what a run killed in epoch 2 would have left
        csv.writer(file).writerow([4, "train/loss", 99.0])
    tune(QUICK, TrainConfig(epochs=2, batch_size=16, log_with="csv", workers=0), tmp_path / "resumed", resume=True)
    straight = [(s, n) for s, n, _ in _csv_rows(tmp_path / "straight" / CSV_FILE)]
    resumed_rows = _csv_rows(log)
    assert [(s, n) for s, n, _ in resumed_rows] == straight and 99.0 not in [v for *_, v in resumed_rows]
