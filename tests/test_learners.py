"""Continual learners: their losses on tiny tensors, prototypes fitted in closed form, the
frozen copy used for distillation, the NME classifier, and each learner end to end."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from adapt.cli import cli
from adapt.continual_learning import LEARNERS, ContinualRun, class_incremental, create_learner
from adapt.continual_learning.learners import FrozenCopy, NearestMeanOfExemplars
from adapt.continual_learning.losses import distillation, icarl_loss, lwf_loss
from adapt.errors import AdaptError
from adapt.heads import create_head
from adapt.heads.statistics import FeatureStatistics
from adapt.train import TrainConfig

SIZE = 32


def test_distillation_by_hand_and_its_gradient_vanishes_at_the_old_logits():
    new, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # T = 2: targets softmax([0, .5]) = [q, 1 - q]; log_softmax([.5, 0])
    q = 1 / (1 + torch.exp(torch.tensor(0.5)))
    log_p = torch.log_softmax(torch.tensor([0.5, 0.0]), dim=0)
    expected = -(q * log_p[0] + (1 - q) * log_p[1])
    assert distillation(new, old, 2.0).item() == pytest.approx(expected.item(), abs=1e-6)
    logits = torch.randn(4, 3, requires_grad=True)
    distillation(logits, logits.detach(), 2.0).backward()
    assert logits.grad.abs().max() < 1e-6  # the old model's own logits are the minimum


def test_lwf_learns_only_the_new_classes_and_distills_the_old():
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0], [0.0, 1.0, 0.3, 0.7]])
    labels = torch.tensor([2, 3])  # the task's classes are 2 and 3
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    new_part = F.cross_entropy(logits[:, 2:], labels - 2)
    assert lwf_loss(logits, labels, old, 3.0, 2.0).item() == pytest.approx(
        (new_part + 3.0 * distillation(logits[:, :2], old, 2.0)).item())  # fmt: skip
    assert lwf_loss(logits, labels, None, 3.0, 2.0).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    old_scores_only = lwf_loss(logits, labels, old, 0.0, 2.0)  # no distillation: the old logits get no gradient
    probe = logits.clone().requires_grad_(True)
    lwf_loss(probe, labels, old, 0.0, 2.0).backward()
    assert torch.equal(probe.grad[:, :2], torch.zeros(2, 2)) and old_scores_only.item() == pytest.approx(new_part.item())


def test_icarl_uses_every_class_and_distills():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 1.0, 0.3]])
    labels = torch.tensor([0, 2])  # an exemplar of an old class and a new image
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expected = F.cross_entropy(logits, labels) + 1.0 * distillation(logits[:, :2], old, 2.0)
    assert icarl_loss(logits, labels, old, 1.0, 2.0).item() == pytest.approx(expected.item())


def test_feature_statistics_add_up_batch_by_batch():
    torch.manual_seed(0)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    whole, parts = FeatureStatistics(5), FeatureStatistics(5)
    whole.add(x, y)
    parts.add(x[:11], y[:11])
    parts.add(x[11:], y[11:])
    assert torch.allclose(whole.means(), parts.means()) and torch.allclose(whole.gram, parts.gram)
    assert torch.allclose(whole.means()[1].float(), x[y == 1].mean(0), atol=1e-6)


def _blobs(classes: int = 4, dim: int = 6, per_class: int = 20, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=generator)
    x = torch.cat([c + 0.3 * torch.randn(per_class, dim, generator=generator) for c in centres])
    return x, torch.arange(classes).repeat_interleave(per_class)


def test_prototype_heads_nearest_mean_cosine_means_and_the_ridge_projection():
    x, y = _blobs()
    statistics = FeatureStatistics(6)
    statistics.add(x, y)
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    linear = create_head("linear", 6)
    linear.add_classes(["a", "b"])
    linear.add_classes(["c", "d"])
    linear.fit_prototypes(statistics)
    probe = torch.randn(50, 6)
    assert torch.equal(linear(probe).argmax(-1), torch.cdist(probe, means).argmin(-1))  # nearest class mean
    cosine = create_head("cosine", 6)
    cosine.add_classes(["a", "b", "c", "d"])
    cosine.fit_prototypes(statistics)
    assert torch.allclose(cosine.blocks[0], means, atol=1e-5)
    language = create_head("language", 6)
    language.add_classes(["zero", "one", "two", "three"])
    language.fit_prototypes(statistics, ridge=1e-3)
    augmented = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    gram = augmented.T @ augmented
    gram.diagonal()[:6] += 1e-3 * float(gram.diagonal()[:6].mean())
    direct = torch.linalg.solve(gram, augmented.T @ language.targets[y].double()).T  # ridge on the stacked data
    assert torch.allclose(language.projection.weight.double(), direct[:, :6], atol=1e-4)
    assert torch.allclose(language.projection.bias.double(), direct[:, 6], atol=1e-4)
    assert (language(x).argmax(-1) == y).float().mean() > 0.9  # separable blobs are classified


def test_the_frozen_copy_does_not_follow_the_training_model():
    scenario = class_incremental("digits", initial=2, increment=4, seed=0, image_size=SIZE, limit=40)
    model, _ = ContinualRun(method="ssf", head="linear", train=TrainConfig(epochs=1)).build(scenario)
    model.head.add_classes(scenario.tasks[0].class_names)
    images = torch.stack([scenario.tasks[0].test[i][0] for i in range(4)])
    model.eval()
    before = model(images).detach()
    frozen = FrozenCopy(model)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)
    assert not torch.allclose(model(images), before)
    assert torch.allclose(frozen.logits(images), before, atol=1e-6)
    assert not any(p.requires_grad for p in frozen.model.parameters())


def test_nearest_mean_of_exemplars_by_hand():
    scorer = NearestMeanOfExemplars(nn.Identity(), torch.tensor([[2.0, 0.0], [0.0, 5.0]]))
    scores = scorer(torch.tensor([[1.0, 0.9], [0.2, 3.0], [-1.0, -0.2]]))
    assert scores.argmax(-1).tolist() == [0, 1, 1]  # by direction: [-1, -0.2] is nearer (0, 1) than (1, 0)


def test_every_learner_has_a_summary_and_checked_options():
    for name in LEARNERS:
        learner = create_learner(name)
        assert learner.name == name and learner.summary
    assert create_learner("icarl", {"classifier": "nme", "memory": 10}).options()["memory"] == 10
    with pytest.raises(AdaptError, match="unknown option 'memory'"):
        create_learner("lwf", {"memory": 10})
    with pytest.raises(AdaptError, match="classifier must be one of"):
        create_learner("icarl", {"classifier": "knn"})
    with pytest.raises(AdaptError, match="unknown learner"):
        create_learner("ewc")


LEARNER_OPTIONS = {"naive": {}, "replay": {"memory": 12}, "lwf": {}, "icarl": {"memory": 12, "classifier": "nme"},
                   "prototype": {}}


@pytest.mark.parametrize("head", ["linear", "cosine", "language"])
@pytest.mark.parametrize("learner", list(LEARNER_OPTIONS))
def test_each_learner_runs_with_each_kind_of_head(tmp_path, learner, head):
    options = LEARNER_OPTIONS[learner]
    scenario = class_incremental("digits", initial=2, increment=4, seed=0, image_size=SIZE, limit=60)
    method = "linear" if learner == "prototype" else "ssf"
    run = ContinualRun(method=method, head=head, learner=learner, learner_options=options, train=TrainConfig(epochs=1),
                       out_dir=tmp_path)  # fmt: skip
    result = run.fit(scenario)
    assert len(result.matrix) == 3 and all(0.0 <= a <= 1.0 for row in result.matrix for a in row if a is not None)
    assert all(path.is_file() for path in result.checkpoints)
    saved = json.loads((tmp_path / "continual.json").read_text())
    assert saved["setup"]["learner"] == learner and saved["setup"]["learner_options"] == create_learner(learner, options).options()
    if learner == "prototype":  # nothing trained, yet far above chance on the first task (2 classes)
        assert result.matrix[0][0] > 0.7
        assert not (tmp_path / "task_1" / "train_state.safetensors").exists()


def test_prototype_refuses_a_method_that_would_stay_untrained(tmp_path):
    scenario = class_incremental("digits", initial=2, increment=4, seed=0, image_size=SIZE, limit=40)
    with pytest.raises(AdaptError, match="use method linear"):
        ContinualRun(method="ssf", head="cosine", learner="prototype", out_dir=tmp_path / "cl").fit(scenario)
    assert not (tmp_path / "cl").exists() or not any((tmp_path / "cl").iterdir())


@pytest.mark.parametrize(("args", "message"), [
    (["--learner", "lwf", "--memory", "20"], "learner lwf: unknown option 'memory'"),
    (["--learner", "icarl", "--learner-option", "classifier"], "--learner-option expects key=value"),
    (["--learner", "icarl", "--learner-option", "temperature=0"], "temperature must be > 0"),
    (["--learner", "prototype"], "use --method linear"),
])  # fmt: skip
def test_cli_learner_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "cl"
    result = CliRunner().invoke(cli, ["continual", "--head", "linear", "--image-size", str(SIZE), "--limit", "40",
                                      "--out", str(out), *args])  # fmt: skip
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert result.stderr.strip().count("\n") == 0
    assert result.stdout == ""  # not even the run's header line
    assert not out.exists() or not any(out.iterdir())


def test_cli_lists_the_learners():
    result = CliRunner().invoke(cli, ["learners"])
    assert result.exit_code == 0
    assert all(name in result.output for name in LEARNERS)
