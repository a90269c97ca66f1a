"""Fisher merging: each ingredient's diagonal Fisher, and the merge by it, against closed forms.

For a linear probe (only the head trains), log p(y|x) = z_y - logsumexp(z) with z = W f + b, so
d log p_y / d W_kj = (1[y=k] - p_k) f_j, and sum_y p_y (1[y=k] - p_k)^2 = p_k (1 - p_k): the exact Fisher of
the head is mean_x p_k (1 - p_k) f_j^2 (and p_k (1 - p_k) for the bias), computed here from the features
with no autograd.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from adapt.adapted import AdaptedModel
from adapt.cli import cli
from adapt.data import load_data
from adapt.merging.adapter_soup import make_soup
from adapt.merging.recipes import Fisher
from adapt.merging.tensors import TensorFile

EXAMPLES = 12
TOLERANCE = 1e-5  # relative to the tensor's largest magnitude: our fp32 features against the closed form's


# a soup: where both Fishers sit near the first one's 1e-6 floor (entries of 1e-7), the fp32 Fisher's rounding
# (1e-3 relative there) moves the weighted mean by up to 2e-4 of the largest weight
SOUP_TOLERANCE = 5e-4


def close(found: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE) -> bool:
    return float((found.double() - expected).abs().max()) <= tolerance * float(expected.abs().max())


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Two linear probes of Lite0 on digits at 32 px (other seeds and learning rates)."""
    from adapt.train import TrainConfig
    from adapt.tuning import TuneJob, tune

    out = tmp_path_factory.mktemp("probes")
    for seed, lr in ((0, 1e-2), (1, 3e-2)):
        tune(TuneJob(method="linear", image_size=32, limit=120), TrainConfig(epochs=1, batch_size=16, lr=lr, seed=seed),
             out / f"run{seed}")  # fmt: skip
    return [out / f"run{seed}" / "adapter.safetensors" for seed in range(2)]


def closed_form_fisher(path, split: str = "train") -> dict[str, torch.Tensor]:
    """mean_x p_k (1 - p_k) f_j^2 for the head weight, p_k (1 - p_k) for its bias, over the split's first examples."""
    adapted, meta = AdaptedModel.from_checkpoint(path)
    model = adapted.model.eval()
    dataset = getattr(load_data("digits", meta.image_size, adapted.mean, adapted.std), split)
    images = torch.stack([dataset[i][0] for i in range(EXAMPLES)])
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True).double()
        probs = model(images).double().softmax(-1)
    spread = probs * (1 - probs)  # examples x classes
    return {"classifier.weight": (spread.T @ features.square()) / EXAMPLES, "classifier.bias": spread.mean(0)}


def test_the_fisher_of_a_linear_head_is_its_closed_form(probes):
    from adapt.merging.fisher import fisher_diagonal
    from adapt.merging.state_model import StateModel

    scorer = StateModel.of(probes[0])
    file = TensorFile(probes[0])
    scorer.load({k: file.get(k).float() for k in file.keys})
    found = fisher_diagonal(scorer.model, set(file.keys), scorer.dataset("digits", "train", "test"), EXAMPLES, "test")
    expected = closed_form_fisher(probes[0])
    assert set(found) == set(expected) == set(file.keys)
    for key, value in expected.items():
        assert close(found[key], value), key
        assert float(value.max()) > 0


def test_a_fisher_soup_is_the_fisher_weighted_mean(probes, tmp_path):
    out = tmp_path / "fisher.safetensors"
    summary = make_soup(probes, out, Fisher(examples=EXAMPLES), data="digits")
    fishers = [closed_form_fisher(p) for p in probes]
    thetas = [{k: v.double() for k, v in load_file(p).items()} for p in probes]
    norms = [sum(float(f.square().sum()) for f in fisher.values()) ** 0.5 for fisher in fishers]
    soup = load_file(out)
    for key in thetas[0]:
        weights = [fishers[i][key] / 2 / norms[i] for i in range(2)]  # c_i = 1/n / |F_i|
        weights[0] = fishers[0][key].clamp(min=1e-6) / 2 / norms[0]  # the first ingredient's floor
        expected = (weights[0] * thetas[0][key] + weights[1] * thetas[1][key]) / (weights[0] + weights[1])
        assert close(soup[key], expected, SOUP_TOLERANCE), key
        assert not torch.allclose(expected, (thetas[0][key] + thetas[1][key]) / 2, atol=1e-4)  # not the plain mean
    assert [e["examples"] for e in summary.estimates] == [EXAMPLES, EXAMPLES]
    assert all(abs(e["norm"] - n) <= TOLERANCE * n for e, n in zip(summary.estimates, norms))
    assert not list(tmp_path.glob(".fisher.*"))  # the estimates' scratch folder is gone


def test_fisher_per_ingredient_data_and_the_cli(probes, tmp_path):
    """--data once per ingredient (here the val split of each): each Fisher on its own; the CLI records them."""
    out = tmp_path / "fisher.safetensors"
    result = CliRunner().invoke(cli, ["soup", *map(str, probes), "--recipe", "fisher", "--data", "digits", "--data",
                                      "digits", "--split", "val", "--examples", str(EXAMPLES), "--no-normalize",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Fisher estimated on" in result.output and "digits val, 12 examples, for each of 2" in result.output
    fishers = [closed_form_fisher(p, "val") for p in probes]
    thetas = [load_file(p) for p in probes]
    weights = [fishers[0]["classifier.bias"].clamp(min=1e-6), fishers[1]["classifier.bias"]]  # no normalization
    expected = (weights[0] * thetas[0]["classifier.bias"] + weights[1] * thetas[1]["classifier.bias"]) / sum(weights)
    assert close(load_file(out)["classifier.bias"], expected, SOUP_TOLERANCE)
