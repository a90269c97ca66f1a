"""Soups and merges: formulas against hand values, validation, streaming, end to end."""

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapt import AdaptError
from adapt.adapted import AdaptedModel
from adapt.cli import cli
from adapt.merging.recipes import Dare, Greedy, TaskArithmetic, Ties, Weighted, global_threshold
from adapt.merging.soup import greedy_soup, stream_soup
from adapt.merging.state_model import held_out_accuracy
from adapt.merging.tensors import TensorFile

TOLERANCE = 1e-6


def _write(path, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def _ingredients(tmp_path, count=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = [{"w": torch.randn(4, 5, generator=g), "b": torch.randn(5, generator=g), "steps": torch.tensor(7 + i)}
              for i in range(count)]  # fmt: skip
    return [_write(tmp_path / f"m{i}.safetensors", s) for i, s in enumerate(states)], states


def test_uniform_soup_is_the_mean(tmp_path):
    paths, states = _ingredients(tmp_path)
    summary = stream_soup(paths, tmp_path / "soup.safetensors")
    soup = load_file(tmp_path / "soup.safetensors")
    for key in ("w", "b"):
        assert (soup[key] - sum(s[key] for s in states) / 3).abs().max() <= TOLERANCE
    assert soup["steps"] == states[0]["steps"]  # non-float: from the first ingredient
    assert summary.tensors == 3 and summary.recipe == "uniform"


def test_weighted_and_task_arithmetic_against_hand_values(tmp_path):
    paths, states = _ingredients(tmp_path, count=2)
    stream_soup(paths, tmp_path / "w.safetensors", Weighted([1.0, 3.0]))
    expected = (states[0]["w"] + 3 * states[1]["w"]) / 4
    assert (load_file(tmp_path / "w.safetensors")["w"] - expected).abs().max() <= TOLERANCE

    base = _write(tmp_path / "base.safetensors", {"w": torch.ones(4, 5), "b": torch.zeros(5), "steps": torch.tensor(0)})
    stream_soup(paths, tmp_path / "ta.safetensors", TaskArithmetic(scale=0.5), base=base)
    expected = 1 + 0.5 * ((states[0]["w"] - 1) + (states[1]["w"] - 1))
    assert (load_file(tmp_path / "ta.safetensors")["w"] - expected).abs().max() <= TOLERANCE
    with pytest.raises(AdaptError, match="needs base "):
        stream_soup(paths, tmp_path / "x.safetensors", TaskArithmetic())


def test_ties_against_a_hand_computed_example(tmp_path):
    base = _write(tmp_path / "base.safetensors", {"v": torch.zeros(4)})
    taus = [[3.0, -1.0, 0.5, 2.0], [-2.0, -2.0, 1.0, 1.0], [1.0, 4.0, -0.1, -3.0]]
    paths = [_write(tmp_path / f"t{i}.safetensors", {"v": torch.tensor(t)}) for i, t in enumerate(taus)]
    stream_soup(paths, tmp_path / "ties.safetensors", Ties(density=0.5), base=base)
    # trimmed: [3,0,0,2], [-2,-2,0,0], [0,4,0,-3]; elected signs [+,+,0->majority +,-]; agreeing means [3,4,0,-3]
    assert torch.allclose(load_file(tmp_path / "ties.safetensors")["v"], torch.tensor([3.0, 4.0, 0.0, -3.0]))


def test_ties_elects_the_majority_sign_where_the_vote_is_zero(tmp_path):
    base = _write(tmp_path / "base.safetensors", {"v": torch.zeros(3)})
    taus = [[2.0, 1.0, 1.0], [-2.0, 1.0, 1.0]]
    paths = [_write(tmp_path / f"t{i}.safetensors", {"v": torch.tensor(t)}) for i, t in enumerate(taus)]
    stream_soup(paths, tmp_path / "ties.safetensors", Ties(density=1.0), base=base)
    # votes [0, 2, 2]: signs [0, +, +]; their sum is +, so entry 0 elects +, and its agreeing mean is 2 (the official
    # code; electing nothing would give 0)
    assert torch.allclose(load_file(tmp_path / "ties.safetensors")["v"], torch.tensor([2.0, 1.0, 1.0]))


def test_ties_trims_over_the_whole_task_vector_unless_per_tensor(tmp_path):
    base = _write(tmp_path / "base.safetensors", {"a": torch.zeros(2), "b": torch.zeros(2)})
    one = _write(tmp_path / "one.safetensors", {"a": torch.tensor([10.0, 9.0]), "b": torch.tensor([1.0, 2.0])})
    stream_soup([one], tmp_path / "g.safetensors", Ties(density=0.5), base=base)
    stream_soup([one], tmp_path / "p.safetensors", Ties(density=0.5, trim="per-tensor"), base=base)
    whole, per_tensor = load_file(tmp_path / "g.safetensors"), load_file(tmp_path / "p.safetensors")
    assert whole["a"].tolist() == [10.0, 9.0] and whole["b"].tolist() == [0.0, 0.0]  # the top half of all four entries
    assert per_tensor["a"].tolist() == [10.0, 0.0] and per_tensor["b"].tolist() == [0.0, 2.0]


def test_the_streamed_global_threshold_is_the_exact_kth_value():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(n, generator=g) * s for n, s in ((5000, 1.0), (3000, 0.01), (7, 50.0))]
    flat = torch.cat(tensors).abs()
    for density in (0.001, 0.2, 0.5, 0.99):
        keep = round(density * flat.numel())
        expected = flat.kthvalue(flat.numel() - keep + 1).values.item()
        assert global_threshold(lambda: iter(tensors), density) == pytest.approx(expected, rel=1e-6)


def test_dare_drops_and_rescales_reproducibly(tmp_path):
    base = _write(tmp_path / "base.safetensors", {"v": torch.full((10_000,), 2.0)})
    one = _write(tmp_path / "one.safetensors", {"v": torch.full((10_000,), 3.0)})
    stream_soup([one], tmp_path / "a.safetensors", Dare(drop=0.3, seed=1), base=base)
    stream_soup([one], tmp_path / "b.safetensors", Dare(drop=0.3, seed=1), base=base)
    stream_soup([one], tmp_path / "c.safetensors", Dare(drop=0.3, seed=2), base=base)
    a, b, c = (load_file(tmp_path / f"{n}.safetensors")["v"] for n in "abc")
    kept = a != 2.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a[kept], torch.tensor(2.0 + 1.0 / 0.7))  # tau / (1 - p)
    assert abs(kept.float().mean().item() - 0.7) < 0.03
    stream_soup([one], tmp_path / "d.safetensors", Dare(drop=0.0), base=base)
    assert torch.equal(load_file(tmp_path / "d.safetensors")["v"], torch.full((10_000,), 3.0))


def test_validation_names_keys_and_files_and_writes_nothing(tmp_path):
    paths, states = _ingredients(tmp_path, count=2)
    out = tmp_path / "soup.safetensors"
    bad = {
        "shape": ({**states[0], "w": torch.zeros(5, 4)}, r"key 'w' has shape \(4, 5\) in .*m0.safetensors but \(5, 4\) in .*shape.safetensors"),
        "dtype": ({**states[0], "b": torch.zeros(5, dtype=torch.float16)}, "key 'b' has dtype"),
        "missing": ({k: v for k, v in states[0].items() if k != "b"}, "key 'b' of .* is missing in"),
        "extra": ({**states[0], "x": torch.zeros(1)}, "key 'x' of .* is not in"),
        "nan": ({**states[0], "w": torch.full((4, 5), float("nan"))}, "tensor 'w' of .* has NaN or Inf"),
    }
    for name, (state, message) in bad.items():
        odd = _write(tmp_path / f"{name}.safetensors", state)
        with pytest.raises(AdaptError, match=message):
            stream_soup([paths[0], odd], out)
        assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    other = _write(tmp_path / "other.safetensors", states[1], {"backbone": "resnet50"})
    mine = _write(tmp_path / "mine.safetensors", states[0], {"backbone": "vit_small_patch16_224"})
    with pytest.raises(AdaptError, match="backbone differs"):
        stream_soup([mine, other], out)
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(AdaptError, match="truncated or not a safetensors file"):
        stream_soup([paths[0], tmp_path / "broken.safetensors"], out)
    adapter = AdaptedModel.create("linear", ["a", "b"], 160, "test_vit", "random")
    adapter.save(tmp_path / "adapter.safetensors")
    with pytest.raises(AdaptError, match="is a plain state dict but .* is an adapter checkpoint|is an adapter checkpoint but"):
        stream_soup([paths[0], tmp_path / "adapter.safetensors"], out)
    assert not out.exists()


def test_sharded_output_and_dtype(tmp_path):
    paths, states = _ingredients(tmp_path)
    summary = stream_soup(paths, tmp_path / "soup.safetensors", dtype=torch.bfloat16, max_shard_bytes=48)
    assert len(summary.outputs) > 1
    index = json.loads((tmp_path / "soup.safetensors.index.json").read_text())
    merged = {}
    for shard in set(index["weight_map"].values()):
        merged.update(load_file(tmp_path / shard))
    assert merged["w"].dtype == torch.bfloat16 and merged["steps"].dtype == torch.int64
    assert torch.allclose(merged["w"].float(), sum(s["w"] for s in states) / 3, atol=1e-2)


MEMORY_PROBE = """
import sys, threading, time, torch
import adapt
from adapt.merging.soup import stream_soup
def anon():  # the process's own (anonymous) memory: the inputs' mapped pages are the page cache's, not ours
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1]) * 1024
paths = sys.argv[2:]
before, peak, running = anon(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)
threading.Thread(target=sample, daemon=True).start()
stream_soup(paths, sys.argv[1], overwrite=True)
running[0] = False
print(max(peak[0], anon()) - before)
"""


def test_peak_memory_does_not_grow_with_the_number_of_ingredients(tmp_path):
    tensor_bytes = 16 * 2**20
    paths = []
    for i in range(6):
        state = {f"t{j}": torch.full((tensor_bytes // 4,), float(i + j)) for j in range(2)}
        paths.append(_write(tmp_path / f"big{i}.safetensors", state))

    def peak(files):
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "out.safetensors"), *map(str, files)],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return int(result.stdout.strip().splitlines()[-1])

    two, six = peak(paths[:2]), peak(paths)
    # holding the inputs would add 4 ingredients x 32 MiB; streaming adds (almost) nothing, and holds about
    # one tensor (the running sum), not a checkpoint, in its own memory
    assert six - two < tensor_bytes, (two, six)
    assert six < 3 * tensor_bytes, six


@pytest.fixture(scope="module")
def ssf_runs(tmp_path_factory):
    """Three short SSF runs on digits (different seeds and learning rates), Lite0 at 48 px."""
    from adapt.train import TrainConfig
    from adapt.tuning import TuneJob, tune

    out = tmp_path_factory.mktemp("ssf_runs")
    job = TuneJob(method="ssf", image_size=48, limit=240)
    for seed, lr in ((0, 3e-3), (1, 5e-3), (2, 1e-2)):
        tune(job, TrainConfig(epochs=2, batch_size=16, lr=lr, seed=seed), out / f"run{seed}")
    return [out / f"run{seed}" / "adapter.safetensors" for seed in range(3)]


def test_greedy_soup_is_never_worse_than_its_best_ingredient(ssf_runs, tmp_path):
    accuracy = held_out_accuracy(ssf_runs[0], "digits", "val")
    summary = greedy_soup(ssf_runs, tmp_path / "greedy.safetensors", accuracy, recipe=Greedy(accept="gt"))
    best_single = max(step.own_accuracy for step in summary.greedy_steps)
    assert summary.greedy_steps[0].own_accuracy == best_single
    final = max(step.soup_accuracy for step in summary.greedy_steps if step.added)
    assert final >= best_single
    from adapt.checkpoint import read_checkpoint

    tensors, meta = read_checkpoint(tmp_path / "greedy.safetensors")
    record = meta.training["soup"]  # the steps live in the soup itself: no side file
    assert [s["soup_accuracy"] for s in record["greedy_steps"]] == [s.soup_accuracy for s in summary.greedy_steps]
    assert [i["path"] for i in record["ingredients"]] == [s.ingredient for s in summary.greedy_steps if s.added]
    assert not list(tmp_path.glob("*.json"))
    assert accuracy({k: v.float() for k, v in tensors.items()}) == pytest.approx(final)


def test_end_to_end_soups_merge_and_evaluate(ssf_runs, tmp_path):
    runner = CliRunner()
    uniform = tmp_path / "uniform.safetensors"
    result = runner.invoke(cli, ["soup", *map(str, ssf_runs), "--out", str(uniform)])
    assert result.exit_code == 0, result.output
    assert "ingredients" in result.output and "process memory (anonymous, peak)" in result.output
    config = tmp_path / "soup.yaml"
    config.write_text(f"ingredients: {json.dumps(list(map(str, ssf_runs)))}\nout: {tmp_path / 'greedy.safetensors'}\n"
                      "recipe: greedy\ndata: digits\nsplit: val\n")  # fmt: skip
    result = runner.invoke(cli, ["soup", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "greedy soup" in result.output and "added" in result.output
    for soup in (uniform, tmp_path / "greedy.safetensors"):
        merged = tmp_path / f"{soup.stem}-merged.safetensors"
        result = runner.invoke(cli, ["merge", str(soup), "--out", str(merged)])
        assert result.exit_code == 0, result.output
        result = runner.invoke(cli, ["eval", str(soup), "--split", "test"])
        assert result.exit_code == 0 and "test accuracy" in result.output, result.output
        assert len(load_file(merged)) == 296


def test_soup_cli_errors_are_one_line(tmp_path):
    paths, _ = _ingredients(tmp_path, count=2)
    runner = CliRunner()
    result = runner.invoke(cli, ["soup", *map(str, paths), "--out", str(tmp_path / "o.safetensors"), "--recipe", "ties"])
    assert result.exit_code == 1 and "needs --base" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["soup", *map(str, paths), "--out", str(tmp_path / "o.safetensors"), "--coeffs", "1,x"])
    assert result.exit_code == 1 and "--coeffs expects numbers" in result.output
    result = runner.invoke(cli, ["soup", *map(str, paths), "--coeffs", "1,2,3", "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 1 and "3 coefficients for 2 ingredients" in result.output
    result = runner.invoke(cli, ["soup", *map(str, paths), "--out", str(tmp_path / "o.safetensors"), "--max-shard-size", "big"])
    assert result.exit_code == 1 and "cannot read size" in result.output
    assert not (tmp_path / "o.safetensors").exists()


def test_scale_auto_picks_the_best_scale_on_held_out_data(ssf_runs, tmp_path):
    out = tmp_path / "ta.safetensors"
    result = CliRunner().invoke(cli, ["soup", *map(str, ssf_runs), "--recipe", "task-arithmetic", "--scale", "auto",
                                      "--data", "digits", "--split", "val", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out accuracy by scale" in result.output and "(chosen)" in result.output
    assert "folded adapters" in result.output  # task vectors of adapters live in weight space
    chosen = json.loads(TensorFile(out).metadata["soup"])["scale"]
    accuracy = held_out_accuracy(out, "digits", "val")
    table = [line for line in result.output.splitlines() if "(chosen)" in line][0]
    assert f"{chosen:g} (chosen)" in table
    assert f"{accuracy({k: v.float() for k, v in load_file(out).items()}):.2%}" in table  # the file is that scale's model


def test_greedy_accepts_ties_as_in_the_paper(ssf_runs, tmp_path):
    accuracy = held_out_accuracy(ssf_runs[0], "digits", "val")
    same = [ssf_runs[0], ssf_runs[0]]  # a copy never changes the soup's accuracy: added with ge, not with gt
    assert greedy_soup(same, tmp_path / "ge.safetensors", accuracy, recipe=Greedy(accept="ge")).greedy_steps[1].added
    assert not greedy_soup(same, tmp_path / "gt.safetensors", accuracy, recipe=Greedy(accept="gt")).greedy_steps[1].added


def test_a_vtab_soup_chooses_its_scale_on_val200_never_on_test(vtab_root, tmp_path):
    """The official merging code picks lambda on validation: on VTAB-1k that is val200 (the README's
    `adapt soup ... --preset ties --data vtab:ROOT/TASK`)."""
    from adapt.data import load_data
    from adapt.train import TrainConfig
    from adapt.tuning import TuneJob, tune

    job = TuneJob(data=f"vtab:{vtab_root}/svhn", method="ssf", backbone="test_vit", weights="random", image_size=32)
    runs = [tune(job, TrainConfig(epochs=1, batch_size=16, lr=lr, seed=0), tmp_path / f"r{i}").out_dir / "adapter.safetensors"
            for i, lr in enumerate((1e-2, 3e-2))]  # fmt: skip
    splits = load_data(f"vtab:{vtab_root}/svhn", 32, (0.5,) * 3, (0.5,) * 3)
    assert len(splits.val) == 20 and splits.val_in_train and splits.held_out_val is None  # val200, inside train800val200
    assert [str(p) for p, _ in splits.val.items] == [str(vtab_root / "svhn" / line.split()[0])
                                                     for line in (vtab_root / "svhn" / "val200.txt").read_text().splitlines()]  # fmt: skip
    out = tmp_path / "ties.safetensors"
    result = CliRunner().invoke(cli, ["soup", *map(str, runs), "--preset", "ties", "--data", f"vtab:{vtab_root}/svhn",
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held-out accuracy by scale" in result.output and "(chosen)" in result.output
    val200 = held_out_accuracy(out, f"vtab:{vtab_root}/svhn", "val")
    table = [line for line in result.output.splitlines() if "(chosen)" in line][0]
    assert f"{val200({k: v.float() for k, v in load_file(out).items()}):.2%}" in table  # scored on val200
    dare = CliRunner().invoke(cli, ["soup", *map(str, runs), "--preset", "dare", "--data", f"vtab:{vtab_root}/svhn",
                                    "--out", str(tmp_path / "dare.safetensors")])  # fmt: skip
    assert dare.exit_code == 0, dare.output
    assert "held-out accuracy by drop rate" in dare.output and "(task arithmetic, no drop: MergeLM's lambda)" in dare.output


def test_dare_searches_its_drop_rate_as_mergelm_after_lambda_by_task_arithmetic(tmp_path):
    """MergeLM (merge_plms_glue.py L219, L297): lambda from the task-arithmetic search without drops, then every
    drop rate at that lambda; the first best rate is kept. Checked against the recipes run by hand."""
    from adapt.merging.recipes import Dare, create_recipe

    paths, states = _ingredients(tmp_path, count=2, seed=3)
    base_state = {"w": torch.zeros(4, 5), "b": torch.zeros(5), "steps": torch.tensor(0)}
    base = _write(tmp_path / "base.safetensors", base_state)
    target = {k: 0.35 * (states[0][k] + states[1][k]) for k in ("w", "b")}

    def evaluate(state):  # a held-out score: the closer to `target`, the higher
        return -sum(float((state[k] - target[k]).abs().sum()) for k in target)

    recipe = create_recipe("dare", {"drop": "0.1,0.5,0.9", "scale": "auto", "scale_grid": "0.3,0.7"})
    assert recipe.drop_grid == [0.1, 0.5, 0.9] and recipe.needs_data
    summary = stream_soup(paths, tmp_path / "dare.safetensors", recipe, base=base, evaluate=evaluate)
    by_scale = {s: evaluate({k: s * (states[0][k] + states[1][k]) for k in target}) for s in (0.3, 0.7)}
    assert summary.scale == max(by_scale, key=by_scale.get) == 0.3  # task arithmetic, no drop
    assert [row[0] for row in summary.scale_table] == [0.3, 0.7]

    def by_hand(rate):
        dare = Dare(drop=rate, scale=0.3, seed=0)
        return {k: dare.merge(k, lambda i, k=k: states[i][k].float(), 2, base_state[k]) for k in target}

    scores = [(rate, evaluate(by_hand(rate))) for rate in (0.1, 0.5, 0.9)]
    assert [r for r, _ in summary.drop_table] == [0.1, 0.5, 0.9]
    assert [a for _, a in summary.drop_table] == pytest.approx([a for _, a in scores], abs=1e-4)
    assert summary.drop == max(scores, key=lambda row: row[1])[0]
    written = load_file(tmp_path / "dare.safetensors")
    assert all((written[k] - by_hand(summary.drop)[k]).abs().max() <= TOLERANCE for k in target)
    soup = json.loads(TensorFile(tmp_path / "dare.safetensors").metadata["soup"])
    assert soup["options"]["drop"] == summary.drop and soup["held_out_accuracy_by_drop"] == [list(r) for r in summary.drop_table]
    with pytest.raises(AdaptError, match="chooses its scale or drop rate on held-out data"):
        stream_soup(paths, tmp_path / "x.safetensors", create_recipe("dare", {"drop": "0.1,0.5"}), base=base)
    with pytest.raises(AdaptError, match="drop rates must be in"):
        create_recipe("dare", {"drop": "0.1,1.5"})


@pytest.mark.parametrize("backbone, weights", [("tf_efficientnet_lite0", None), ("test_vit", "random")])
@pytest.mark.parametrize("method, options", [("ssf", None), ("lora", {"rank": 4}), ("spt", {"budget": "1%"}),
                                             ("bitfit", None), ("full", None), ("linear", None)])  # fmt: skip
def test_untrained_ingredients_soup_to_the_pretrained_model_under_every_recipe(method, options, backbone, weights,
                                                                               tmp_path):  # fmt: skip
    """Task vectors are differences in one parametrization: ingredients that are the pretrained function give it
    back at lambda 1, under every recipe (SPT trains on BatchNorm-folded convs; its merge unfolds them)."""
    from adapt.data import load_data
    from adapt.merging.adapter_soup import make_soup
    from adapt.merging.recipes import Uniform

    setup = None
    if method == "spt":  # SPT allocates from the data first
        from adapt.train import TrainConfig

        setup = (load_data("digits", 32, (0.5,) * 3, (0.5,) * 3, limit=40), TrainConfig(batch_size=8))
        options = {**options, "sensitivity_batches": 2, "sensitivity_batch_size": 8}
    paths = []
    for i in range(2):
        adapted = AdaptedModel.create(method, [str(c) for c in range(10)], 32, backbone, weights, options, setup=setup)
        if method == "spt":
            options = adapted.method.options()  # the same allocation for both, as two runs from one score
            setup = None
        with torch.no_grad():
            for name, parameter in adapted.model.named_parameters():
                if parameter.requires_grad and "ssf" in name:
                    parameter.fill_(1.0 if name.endswith("scale") else 0.0)
        paths.append(tmp_path / f"{i}.safetensors")
        adapted.save(paths[-1])
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    adapted.model.eval()
    with torch.no_grad():
        expected = adapted.model(images)
    for recipe in (Uniform(), TaskArithmetic(scale=1.0), Ties(scale=1.0), Dare(drop=0.5, scale=1.0)):
        out = tmp_path / f"{recipe.name}.safetensors"
        make_soup(paths, out, recipe)  # an adapter soup, or a merged model where task vectors need the fold
        model = AdaptedModel.from_checkpoint(out)[0].model.eval()
        with torch.no_grad():
            assert (model(images) - expected).abs().max() <= 1e-5, recipe.name


def _mergekit_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """mergekit's slerp (mergekit/merge_methods/slerp.py), written again in numpy float64 for the test."""
    import numpy as np

    a, b = v0.double().numpy(), v1.double().numpy()
    na, nb = a / np.linalg.norm(a), b / np.linalg.norm(b)
    dot = np.sum(na * nb)
    if abs(dot) > 0.9995:
        return torch.from_numpy((1 - t) * a + t * b)
    theta = np.arccos(dot)
    return torch.from_numpy(np.sin(theta - theta * t) / np.sin(theta) * a + np.sin(theta * t) / np.sin(theta) * b)


def test_wise_ft_slerp_and_model_stock_against_their_formulas(tmp_path):
    from adapt.merging.recipes import ModelStock, Slerp, WiseFT, create_recipe

    g = torch.Generator().manual_seed(7)
    base_state = {"w": torch.randn(6, 5, generator=g), "bn.running_mean": torch.randn(6, generator=g)}
    base = _write(tmp_path / "base.safetensors", base_state)
    states = [{k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in base_state.items()} for _ in range(3)]
    states[2]["w"] = states[0]["w"] + 1e-5 * torch.randn(6, 5, generator=g)  # nearly parallel to the first
    paths = [_write(tmp_path / f"ft{i}.safetensors", s) for i, s in enumerate(states)]

    stream_soup(paths[:1], tmp_path / "wise.safetensors", WiseFT(scale=0.3), base=base)
    expected = 0.7 * base_state["w"] + 0.3 * states[0]["w"]
    assert (load_file(tmp_path / "wise.safetensors")["w"] - expected).abs().max() <= TOLERANCE

    stream_soup(paths[:2], tmp_path / "slerp.safetensors", Slerp(scale=0.3))
    soup = load_file(tmp_path / "slerp.safetensors")
    assert (soup["w"].double() - _mergekit_slerp(0.3, states[0]["w"], states[1]["w"])).abs().max() <= TOLERANCE
    statistics = 0.7 * states[0]["bn.running_mean"] + 0.3 * states[1]["bn.running_mean"]
    assert (soup["bn.running_mean"] - statistics).abs().max() <= TOLERANCE  # statistics interpolate linearly
    stream_soup([paths[0], paths[2]], tmp_path / "lerp.safetensors", Slerp(scale=0.3))
    lerp = 0.7 * states[0]["w"] + 0.3 * states[2]["w"]  # nearly parallel: linear, as mergekit falls back
    assert (load_file(tmp_path / "lerp.safetensors")["w"] - lerp).abs().max() <= TOLERANCE

    for count in (2, 3):
        stream_soup(paths[:count], tmp_path / f"stock{count}.safetensors", ModelStock(), base=base)
        taus = [(s["w"] - base_state["w"]).flatten().double() for s in states[:count]]
        cosines = [float(taus[i] @ taus[j] / (taus[i].norm() * taus[j].norm()))
                   for i in range(count) for j in range(i + 1, count)]  # fmt: skip
        cos = sum(cosines) / len(cosines)  # the mean over pairs, as mergekit's model_stock
        t = count * cos / (1 + (count - 1) * cos)
        mean = sum(s["w"] for s in states[:count]) / count
        expected = t * mean + (1 - t) * base_state["w"]
        assert (load_file(tmp_path / f"stock{count}.safetensors")["w"] - expected).abs().max() <= TOLERANCE

    def evaluate(state):  # held-out: closest to a point between the two
        return -float((state["w"] - (0.2 * states[0]["w"] + 0.8 * states[1]["w"])).abs().sum())

    summary = stream_soup(paths[:2], tmp_path / "auto.safetensors", create_recipe("slerp", {"scale": "auto"}),
                          evaluate=evaluate)  # fmt: skip
    by_t = {t: evaluate({"w": _mergekit_slerp(t, states[0]["w"], states[1]["w"]).float()}) for t in Slerp.default_grid}
    assert summary.scale == max(by_t, key=by_t.get) and [row[0] for row in summary.scale_table] == list(Slerp.default_grid)
    for recipe, given, message in ((WiseFT(), paths[:2], "interpolates one fine-tune"),
                                   (Slerp(), paths, "interpolates two ingredients; got 3"),
                                   (ModelStock(), paths[:1], "needs at least two fine-tunes")):  # fmt: skip
        with pytest.raises(AdaptError, match=message):
            stream_soup(given, tmp_path / "x.safetensors", recipe, base=base if recipe.needs_base else None)
    assert not (tmp_path / "x.safetensors").exists()


def test_wise_ft_of_one_adapter_run_and_model_stock_of_two_from_the_command_line(ssf_runs, tmp_path):
    out = tmp_path / "wise.safetensors"
    result = CliRunner().invoke(cli, ["soup", str(ssf_runs[0]), "--recipe", "wise-ft", "--scale", "auto", "--data",
                                      "digits", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = json.loads(TensorFile(out).metadata["soup"])["held_out_accuracy_by_scale"]
    assert [row[0] for row in table] == [round(0.1 * i, 1) for i in range(11)]
    own = held_out_accuracy(ssf_runs[0], "digits", "val")({k: v.float() for k, v in load_file(ssf_runs[0]).items()})
    assert table[-1][1] == pytest.approx(own)  # alpha 1 is the fine-tune itself
    stock = CliRunner().invoke(cli, ["soup", *map(str, ssf_runs[:2]), "--recipe", "model-stock", "--out",
                                     str(tmp_path / "stock.safetensors")])  # fmt: skip
    assert stock.exit_code == 0, stock.output
    assert "model-stock" in stock.output and (tmp_path / "stock.safetensors").is_file()
