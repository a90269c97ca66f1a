"""BatchNorm statistics and tensors the base lacks are averaged by every recipe, never merged as task vectors.

The case from the exactness issue: fine-tunes made with BatchNorm in train mode carry other statistics than
the base (here running_var x 0.3, running_mean + 0.5); task arithmetic used to write running_var down to
-208 and the model then gave NaN.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapt.cli import cli
from adapt.errors import AdaptError
from adapt.merging.recipes import Dare, TaskArithmetic, Ties, Uniform, Weighted, global_threshold
from adapt.merging.soup import stream_soup

TOLERANCE = 1e-6  # fp32 means of a few tensors


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model("test_efficientnet", num_classes=5).state_dict().items()}


@pytest.fixture()
def bn_models(tmp_path):
    """A base and three fine-tunes of a BatchNorm network whose statistics differ from the base's."""
    base = _state(0)
    paths = []
    for i, (var_scale, shift) in enumerate(((0.3, 0.5), (0.5, -0.2), (2.0, 0.1))):
        generator = torch.Generator().manual_seed(10 + i)
        state = {}
        for key, value in base.items():
            if key.endswith("running_var"):
                state[key] = value * var_scale
            elif key.endswith("running_mean"):
                state[key] = value + shift
            elif key.endswith("num_batches_tracked"):
                state[key] = value + 100 * (i + 1)
            else:
                state[key] = value + 0.05 * torch.randn(value.shape, generator=generator)
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(state, paths[-1])
    save_file(base, tmp_path / "base.safetensors")
    return tmp_path / "base.safetensors", paths


RECIPES = {
    "uniform": lambda: Uniform(),
    "weighted": lambda: Weighted(coeffs=[0.2, 0.3, 0.5]),
    "weighted, extrapolating": lambda: Weighted(coeffs=[2.0, -0.5, -0.5], allow_negative=True),
    "task-arithmetic": lambda: TaskArithmetic(scale=1.0),
    "task-arithmetic, negative": lambda: TaskArithmetic(scale=-1.0),
    "ties": lambda: Ties(density=0.2, scale=1.0),
    "dare": lambda: Dare(drop=0.5, seed=0, scale=1.0),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_averages_batchnorm_statistics(bn_models, tmp_path, name):
    base, paths = bn_models
    recipe = RECIPES[name]()
    out = tmp_path / "soup.safetensors"
    stream_soup(paths, out, recipe, base=base if recipe.needs_base else None)
    soup, states = load_file(out), [load_file(p) for p in paths]
    convex = recipe.coeffs if isinstance(recipe, Weighted) and min(recipe.coeffs) >= 0 else [1.0] * len(states)
    for key in soup:
        if key.endswith(("running_mean", "running_var")):
            expected = sum(c * s[key] for c, s in zip(convex, states)) / sum(convex)
            assert (soup[key] - expected).abs().max() <= TOLERANCE, key
        if key.endswith("running_var"):
            assert soup[key].min() >= 0, key
        if key.endswith("num_batches_tracked"):
            assert soup[key] == max(s[key] for s in states), key
    model = timm.create_model("test_efficientnet", num_classes=5).eval()
    model.load_state_dict(soup)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(logits).all()


def test_the_cli_case_from_the_issue_writes_a_usable_model(bn_models, tmp_path):
    base, paths = bn_models
    before = [p.read_bytes() for p in paths]
    out = tmp_path / "ta.safetensors"
    result = CliRunner().invoke(cli, ["soup", *map(str, paths[:2]), "--recipe", "task-arithmetic", "--base", str(base),
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    soup = load_file(out)
    assert min(float(v.min()) for k, v in soup.items() if k.endswith("running_var")) >= 0
    assert [p.read_bytes() for p in paths] == before


def test_a_negative_variance_is_never_written(tmp_path):
    bad = {"bn.running_var": torch.tensor([1.0, -3.0]), "bn.weight": torch.ones(2)}
    good = {"bn.running_var": torch.tensor([1.0, 1.0]), "bn.weight": torch.ones(2)}
    save_file(bad, tmp_path / "bad.safetensors")
    save_file(good, tmp_path / "good.safetensors")
    out = tmp_path / "soup.safetensors"
    with pytest.raises(AdaptError, match="BatchNorm variance 'bn.running_var' has negative entries"):
        stream_soup([tmp_path / "bad.safetensors", tmp_path / "good.safetensors"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "good.safetensors"]


@pytest.mark.parametrize("recipe", [TaskArithmetic(scale=0.7), Ties(density=0.5), Dare(drop=0.2)], ids=lambda r: r.name)
def test_tensors_the_base_lacks_are_averaged_not_summed(tmp_path, recipe):
    """A head trained for new classes: the base has none (or one for other classes)."""
    g = torch.Generator().manual_seed(0)
    trunk = {f"w{i}": torch.randn(8, 8, generator=g) for i in range(3)}
    heads = [torch.randn(4, 8, generator=g) for _ in range(3)]
    paths = []
    for i, head in enumerate(heads):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file({**{k: v + 0.1 * i for k, v in trunk.items()}, "head.weight": head}, paths[-1])
    for name, base_state in (("none", trunk), ("other classes", {**trunk, "head.weight": torch.zeros(1000, 8)})):
        save_file(base_state, tmp_path / "base.safetensors")
        out = tmp_path / f"soup-{name}.safetensors"
        summary = stream_soup(paths, out, recipe, base=tmp_path / "base.safetensors")
        head = load_file(out)["head.weight"]
        assert (head - sum(heads) / 3).abs().max() <= TOLERANCE, name
        assert summary.averaged == ["head.weight"]


def test_a_base_that_lacks_most_tensors_is_refused(tmp_path):
    save_file({"a": torch.ones(2), "b": torch.ones(2), "c": torch.ones(2)}, tmp_path / "ft0.safetensors")
    save_file({"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.ones(2)}, tmp_path / "ft1.safetensors")
    save_file({"c": torch.ones(2), "x": torch.ones(5)}, tmp_path / "base.safetensors")
    with pytest.raises(AdaptError, match="lacks 2 of the 3 tensors .* not the model these were fine-tuned from"):
        stream_soup([tmp_path / "ft0.safetensors", tmp_path / "ft1.safetensors"], tmp_path / "o.safetensors",
                    TaskArithmetic(), base=tmp_path / "base.safetensors")  # fmt: skip
    assert not (tmp_path / "o.safetensors").exists()


def test_the_global_trim_is_exact_on_tied_magnitudes_and_bin_edges():
    """Magnitudes on a coarse lattice sit exactly on histogram bin edges, many of them tied."""
    g = torch.Generator().manual_seed(0)
    lattice = [torch.randint(-64, 65, (n,), generator=g).double() / 64 for n in (4096, 1000, 17)]
    lattice[0][:50] = 1.0  # the largest magnitude, tied
    edges = [torch.randint(-4096, 4097, (n,), generator=g).double() / 4096 for n in (3000, 900)]  # one per bin edge
    edges[0][0] = 1.0
    for tensors in (lattice, edges, [t.float() * 3.3 for t in lattice], [t.sign() * (t.abs() // 0.25) * 0.25 for t in lattice]):
        flat = torch.cat([t.flatten() for t in tensors]).abs().double()
        ordered = flat.sort(descending=True).values
        for density in (0.001, 0.01, 0.1, 0.2, 0.5, 0.9):
            keep = max(1, round(density * flat.numel()))
            assert global_threshold(lambda: iter(tensors), density) == ordered[keep - 1].item(), density


def test_scale_auto_records_every_scale_and_the_default_grid_is_the_papers(bn_models, tmp_path):
    """TIES searches 0.8..2.5 (ties-merging's README), task arithmetic 0.1..1.0, DARE MergeLM's grid."""
    from adapt.merging.recipes import DARE_GRID, TASK_ARITHMETIC_GRID, TIES_GRID, create_recipe

    assert TIES_GRID == tuple(round(0.8 + 0.1 * i, 1) for i in range(18)) and TIES_GRID[-1] == 2.5
    assert TASK_ARITHMETIC_GRID == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert DARE_GRID == (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
    assert create_recipe("ties", {"scale": "auto"}).grid() == TIES_GRID
    assert create_recipe("dare", {"scale": "auto"}).grid() == DARE_GRID
    custom = create_recipe("ties", {"scale_grid": "0.5,1.5"})
    assert custom.auto_scale and custom.grid() == (0.5, 1.5)

    base, paths = bn_models
    stem = load_file(base)["conv_stem.weight"]

    def accuracy(state):  # a stand-in score that grows with the scale
        return float((state["conv_stem.weight"] - stem).abs().sum())

    out = tmp_path / "ties.safetensors"
    summary = stream_soup(paths, out, custom, base=base, evaluate=accuracy)
    assert [s for s, _ in summary.scale_table] == [0.5, 1.5] and summary.scale == 1.5
    from adapt.merging.tensors import TensorFile

    record = json.loads(TensorFile(out).metadata["soup"])
    assert record["scale"] == 1.5 and record["options"]["density"] == 0.2
    assert record["held_out_accuracy_by_scale"] == [list(row) for row in summary.scale_table]
    import hashlib

    assert record["ingredients"] == [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths]
    assert record["base"] == {"path": str(base), "sha256": hashlib.sha256(base.read_bytes()).hexdigest()}
    statistics = load_file(out)["bn1.running_var"]
    assert (statistics - sum(load_file(p)["bn1.running_var"] for p in paths) / 3).abs().max() <= TOLERANCE


def test_scale_grid_is_checked(tmp_path):
    from adapt.merging.recipes import create_recipe

    for grid, message in (("1,x", "expects numbers"), ("1,1", "distinct"), ("nan", "distinct numbers"), ("", "expects")):
        with pytest.raises(AdaptError, match=message):
            create_recipe("ties", {"scale_grid": grid})
    with pytest.raises(AdaptError, match="drop the fixed scale"):
        create_recipe("ties", {"scale_grid": "1,2", "scale": 0.5})


def test_the_base_can_be_the_embedded_or_a_named_pretrained_backbone(tmp_path):
    from adapt.backbones import create_backbone

    trunk, _ = create_backbone("tf_efficientnet_lite0", "embedded", 0)
    pretrained = {k: v.clone() for k, v in trunk.state_dict().items()}
    save_file(pretrained, tmp_path / "pretrained.safetensors")
    paths = []
    for i in range(2):  # fine-tunes with a 4-class head, which the base does not have
        generator = torch.Generator().manual_seed(i)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if "running" not in k and v.is_floating_point()
                 else v for k, v in pretrained.items()}  # fmt: skip
        state |= {"classifier.weight": torch.randn(4, 1280, generator=generator), "classifier.bias": torch.zeros(4)}
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(state, paths[-1])
    runner = CliRunner()
    for base, out in ((tmp_path / "pretrained.safetensors", "file.safetensors"), ("embedded", "embedded.safetensors")):
        result = runner.invoke(cli, ["soup", *map(str, paths), "--recipe", "task-arithmetic", "--scale", "0.5",
                                     "--base", str(base), "--out", str(tmp_path / out)])  # fmt: skip
        assert result.exit_code == 0, result.output
    from_file, embedded = load_file(tmp_path / "file.safetensors"), load_file(tmp_path / "embedded.safetensors")
    assert from_file.keys() == embedded.keys() and all(torch.equal(from_file[k], embedded[k]) for k in embedded)
    from adapt.merging.tensors import TensorFile

    assert json.loads(TensorFile(tmp_path / "embedded.safetensors").metadata["soup"])["base"]["path"] == "embedded (tf_efficientnet_lite0)"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".soup.")]  # the built base is gone
    result = runner.invoke(cli, ["soup", *map(str, paths), "--recipe", "ties", "--base", "no/such.safetensors",
                                 "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert result.exit_code == 1 and "no such file" in result.stderr and not (tmp_path / "x.safetensors").exists()
