"""Continual learning: scenarios, heads, replay memory, metrics, the runner and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from adapt.cli import cli
from adapt.continual_learning import ContinualMetrics, ContinualRun, ExemplarMemory, class_incremental, herding_order
from adapt.continual_learning.metrics import seen_accuracies
from adapt.data import load_data
from adapt.data.digits import DIGIT_NAMES
from adapt.errors import AdaptError
from adapt.evaluation import accuracy
from adapt.heads import create_head
from adapt.devices import make_accelerator
from adapt.train import TrainConfig

SIZE = 32  # digits are 8x8; 32 px keeps these runs to seconds


def test_tasks_are_disjoint_cover_every_class_and_relabel_consistently():
    scenario = class_incremental("digits", initial=4, increment=3, seed=3, image_size=SIZE)
    assert [len(t.class_names) for t in scenario.tasks] == [4, 3, 3]
    assert sorted(scenario.class_names) == sorted(DIGIT_NAMES)
    assert [n for t in scenario.tasks for n in t.class_names] == scenario.class_names
    assert scenario.class_names != DIGIT_NAMES  # the seed shuffles the order
    assert class_incremental("digits", 4, 3, seed=3, image_size=SIZE).class_names == scenario.class_names
    plain = load_data("digits", SIZE, (0.5,) * 3, (0.5,) * 3)
    for split in ("train", "val", "test"):
        parts = [getattr(t, split) for t in scenario.tasks]
        assert sum(len(p) for p in parts) == len(getattr(plain, split))
        for task, part in zip(scenario.tasks, parts):
            assert set(part.targets) == set(task.classes)
            original = [part.dataset.targets[i] for i in part.indices]
            assert all(scenario.class_names[new] == DIGIT_NAMES[old] for new, old in zip(part.targets, original))


def test_bad_splits_are_refused():
    with pytest.raises(AdaptError, match="initial <= 10"):
        class_incremental("digits", initial=11, image_size=SIZE)


def test_metrics_match_hand_values():
    matrix = [[0.9, None, None], [0.6, 0.8, None], [0.5, 0.7, 0.9]]
    metrics = ContinualMetrics.from_matrix(matrix)
    assert metrics.average_incremental_accuracy == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert metrics.last_accuracy == pytest.approx(0.7)
    assert metrics.average_incremental_accuracy_task_mean == metrics.average_incremental_accuracy
    # PyCIL pools the seen tasks' test samples: with 10, 30 and 60 of them, correct counts 9 | 6+24 | 5+21+54
    pooled = ContinualMetrics.from_matrix(matrix, sizes=[10, 30, 60])
    assert pooled.average_incremental_accuracy == pytest.approx((9 / 10 + 30 / 40 + 80 / 100) / 3)
    assert pooled.last_accuracy == pytest.approx(0.80) and pooled.last_accuracy_task_mean == pytest.approx(0.7)
    assert pooled.average_incremental_accuracy_task_mean == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert metrics.forgetting == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert metrics.backward_transfer == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    single = ContinualMetrics.from_matrix([[0.8]])
    assert (single.forgetting, single.backward_transfer, single.last_accuracy) == (0.0, 0.0, 0.8)


@pytest.mark.parametrize("name", ["linear", "cosine", "language"])
def test_heads_only_score_classes_they_were_given_and_keep_old_rows(name):
    torch.manual_seed(0)
    head = create_head(name, 16)
    head.add_classes(["zero", "one"])
    before = {k: v.clone() for k, v in head.state_dict().items()}
    features = torch.randn(64, 16)
    assert head(features).shape == (64, 2)
    head.add_classes(["two", "three", "four"])
    assert head(features).shape == (64, 5)
    after = head.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k != "targets")
    if name == "language":
        assert torch.equal(after["targets"][:2], before["targets"])
        assert torch.allclose(after["targets"].norm(dim=-1), torch.ones(5))
        again = head.embedder.embed(["a photo of a two"])  # cached per prompt, same vector
        assert torch.equal(again[0], after["targets"][2])


def test_a_missing_text_model_is_a_clear_error(tmp_path):
    head = create_head("language", 8, text_model=str(tmp_path / "no-model"))  # loaded when first needed
    with pytest.raises(AdaptError, match="no sentence-transformers text model at"):
        head.add_classes(["zero"])
    with pytest.raises(AdaptError, match="no sentence-transformers text model at"):
        ContinualRun(head="language", head_options={"text_model": str(tmp_path / "no-model")})
    with pytest.raises(AdaptError, match="must contain"):
        create_head("language", 8, template="a photo")


def test_herding_picks_the_running_mean_closest_to_the_class_mean():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # mean (0.533, 0.6): (0.6, 0.8) is closest; then (1, 0) brings the pair's mean closer than (0, 1)
    assert herding_order(features, 3) == [2, 0, 1]
    assert herding_order(features, 1) == [2]


def test_memory_stays_within_size_and_balanced_per_class():
    memory = ExemplarMemory(size=10, selection="herding")
    embed = lambda images: torch.stack([image.flatten() for image, _ in images])  # noqa: E731  (pixels as features)
    for task in range(2):
        labels = torch.arange(2 * task, 2 * task + 2).repeat_interleave(6)
        memory.add_task(TensorDataset(torch.randn(12, 3, 4, 4), labels), embed)
    assert memory.counts() == {0: 2, 1: 2, 2: 2, 3: 2}
    stored = memory.dataset()
    assert len(stored) == 8 and sorted(int(stored[i][1]) for i in range(8)) == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(AdaptError, match="selection"):
        ExemplarMemory(10, "best")


def test_task_incremental_accuracy_predicts_among_the_tasks_classes():
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(4))
    images = torch.tensor([[0.0, 1.0, 0.0, 9.0], [0.0, 0.0, 1.0, 9.0]])  # the largest logit is class 3
    data = TensorDataset(images, torch.tensor([1, 2]))
    assert accuracy(model, data, make_accelerator()) == 0.0
    assert accuracy(model, data, make_accelerator(), columns=range(0, 3)) == 1.0


def test_a_run_carries_state_across_tasks_and_never_predicts_unseen_classes(tmp_path):
    scenario = class_incremental("digits", initial=2, increment=4, seed=0, image_size=SIZE, limit=240)
    run = ContinualRun(method="ssf", head="language", learner="replay", learner_options={"memory": 20},
                       train=TrainConfig(epochs=1), out_dir=tmp_path)  # fmt: skip
    seen_rows: list = []
    sizes = [len(t.test) for t in scenario.tasks]
    assert len(set(sizes)) > 1  # tasks of 2, 4 and 4 classes: the pooled and per-task means differ

    def after_task(task, matrix, model) -> None:
        seen_rows.append(model.head.targets.clone())
        pooled = ConcatDataset([t.test for t in scenario.tasks[: task.index + 1]])
        assert seen_accuracies(matrix[: task.index + 1], sizes)[-1] == pytest.approx(
            accuracy(model, pooled, make_accelerator()), abs=1e-9)  # top-1 over every seen test sample, as PyCIL
        with torch.no_grad():
            images = torch.stack([scenario.tasks[-1].test[i][0] for i in range(8)])
            assert model.eval()(images).shape[1] == task.classes.stop  # outputs for the classes seen, no more

    result = run.fit(scenario, on_task_end=after_task)
    assert torch.equal(seen_rows[0], seen_rows[-1][:2])  # old classes' targets unchanged
    assert len(result.matrix) == 3 and all(row[t] is not None for t, row in enumerate(result.matrix))
    first, last = load_file(result.checkpoints[0]), load_file(result.checkpoints[-1])
    ssf = [k for k in first if ".ssf." in k]
    assert ssf and any(not torch.equal(first[k], last[k]) for k in ssf)  # the adapter kept learning
    assert result.checkpoints[-1].parent.name == "task_3"


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "cl"
    args = ["continual", "--data", "digits", "--initial", "5", "--increment", "5", "--head", "linear", "--memory", "20",
            "--epochs", "1", "--image-size", str(SIZE), "--limit", "200", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "after task 2" in result.output and "average incremental accuracy" in result.output
    saved = json.loads((out / "continual.json").read_text())
    expected = ContinualMetrics.from_matrix(saved["matrix"], saved["test_sizes"])
    assert saved["average_incremental_accuracy"] == pytest.approx(expected.average_incremental_accuracy)
    assert saved["forgetting"] == pytest.approx(expected.forgetting)
    assert saved["setup"]["learner"] == "replay" and saved["setup"]["learner_options"]["memory"] == 20
    assert (out / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "task_2" / "adapter.safetensors").is_file()
    result = CliRunner().invoke(cli, ["continual", "--out", str(out), "--resume"])  # the rest from OUT/config.yaml
    assert result.exit_code == 0 and "all 2 tasks are done: nothing to train" in result.output, result.output
    assert json.loads((out / "continual.json").read_text())["matrix"] == saved["matrix"]


def test_cli_missing_text_model_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["continual", "--text-model", str(tmp_path / "none"), "--image-size", str(SIZE),
                                      "--limit", "50", "--out", str(tmp_path / "cl")])  # fmt: skip
    assert result.exit_code == 1
    assert "no sentence-transformers text model at" in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "cl" / "continual.json").exists()


def test_naive_is_pycil_finetune_cross_entropy_on_the_new_classes_only():
    """PyCIL models/finetune.py: F.cross_entropy(logits[:, known:], targets - known) after the first task."""
    from adapt.continual_learning import create_learner

    scenario = class_incremental("digits", initial=4, increment=3, seed=0, image_size=SIZE, limit=60)
    logits = torch.randn(6, 7, requires_grad=True)
    labels = torch.tensor([4, 5, 6, 4, 5, 6])
    naive = create_learner("naive")
    naive.begin_task(None, scenario.tasks[1])
    loss = naive.loss(logits, None, labels)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:, 4:], labels - 4).item())
    loss.backward()
    assert logits.grad[:, :4].abs().max() == 0  # the old classes' logits get no gradient
    every = create_learner("naive", {"loss": "all-seen"})
    every.begin_task(None, scenario.tasks[1])
    assert every.loss(logits, None, labels).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item())


def test_herding_and_class_means_see_unaugmented_images(folder_root):
    """As PyCIL (mode="test"): exemplars are chosen, and NME means taken, on the test transform's images."""
    scenario = class_incremental(f"folder:{folder_root}", initial=2, increment=1, seed=0, image_size=SIZE)
    task = scenario.tasks[0]
    first = [task.train[i][0] for i in range(len(task.train))]
    again = [task.train[i][0] for i in range(len(task.train))]
    assert any(not torch.equal(a, b) for a, b in zip(first, again))  # training images are augmented
    plain = [task.train_plain[i][0] for i in range(len(task.train_plain))]
    assert all(torch.equal(a, task.train_plain[i][0]) for i, a in enumerate(plain))  # the test transform
    assert [task.train[i][1] for i in range(len(task.train))] == [task.train_plain[i][1] for i in range(len(plain))]
    seen = []

    def features(images):
        batch = torch.stack([images[i][0] for i in range(len(images))])
        seen.append(batch)
        return batch.flatten(1)

    memory = ExemplarMemory(size=4, selection="herding")
    memory.add_task(task.train, features, task.train_plain)
    for batch in seen:  # every image herding saw is an unaugmented one
        assert all(any(torch.equal(image, p) for p in plain) for image in batch)
    label = next(iter(memory.ranked))
    exemplars = memory.exemplars(label, plain=True)
    assert all(any(torch.equal(exemplars[i][0], p) for p in plain) for i in range(len(exemplars)))


class _Stop(Exception):
    pass


@pytest.mark.parametrize("learner, options, head", [("icarl", {"memory": 20, "classifier": "nme"}, "linear"),
                                                    ("prototype", {}, "cosine")])  # fmt: skip
def test_a_resumed_run_gives_the_straight_runs_results(tmp_path, learner, options, head):
    scenario = class_incremental("digits", initial=2, increment=2, seed=0, image_size=SIZE, limit=120)
    method = "linear" if learner == "prototype" else "ssf"

    def make(out, resume=False):
        return ContinualRun(method=method, head=head, learner=learner, learner_options=options,
                            train=TrainConfig(epochs=2, batch_size=16), out_dir=out, resume=resume)  # fmt: skip

    straight = make(tmp_path / "straight").fit(scenario)

    def stop_after_task_2(task, matrix, model):
        if task.index == 1:
            raise _Stop

    with pytest.raises(_Stop):
        make(tmp_path / "resumed").fit(scenario, on_task_end=stop_after_task_2)
    assert not (tmp_path / "resumed" / "task_3").exists()
    if learner != "prototype":  # also stop inside task 3, after its first epoch: the task's own train state resumes
        from adapt import train as train_module

        original = train_module.Trainer._save

        def save_then_stop(self, epoch, *args):
            original(self, epoch, *args)
            if self.out_dir.name == "task_3":
                raise _Stop

        train_module.Trainer._save = save_then_stop
        try:
            with pytest.raises(_Stop):
                make(tmp_path / "resumed", resume=True).fit(scenario)
        finally:
            train_module.Trainer._save = original
    resumed = make(tmp_path / "resumed", resume=True).fit(scenario)
    assert resumed.matrix == straight.matrix  # accuracies are counts over the same images: exactly equal
    for a, b in zip(straight.checkpoints, resumed.checkpoints):
        left, right = load_file(a), load_file(b)
        assert left.keys() == right.keys() and all(torch.allclose(left[k], right[k], atol=1e-6) for k in left)


def test_resume_refuses_another_run(tmp_path):
    scenario = class_incremental("digits", initial=5, increment=5, seed=0, image_size=SIZE, limit=60)
    ContinualRun(method="linear", head="linear", learner="naive", train=TrainConfig(epochs=1), out_dir=tmp_path).fit(scenario)
    with pytest.raises(AdaptError, match="cannot resume the continual run .*learner was 'naive', now 'replay'"):
        ContinualRun(method="linear", head="linear", learner="replay", learner_options={"memory": 20},
                     train=TrainConfig(epochs=1), out_dir=tmp_path, resume=True).fit(scenario)  # fmt: skip
