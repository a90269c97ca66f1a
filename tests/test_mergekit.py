"""mergekit configurations: each shared method against its definition, computed again here in numpy float64
with per-entry loops (mergekit/merge_methods/*.py and sparsify.py), and the keys adapt refuses by name."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapt.cli import cli
from test_bad_inputs import assert_one_line
from test_soup import _mergekit_slerp

TOLERANCE = 1e-5  # fp32 merges against float64 expectations
SHAPES = {"blocks.0.w": (4, 5), "blocks.1.w": (4, 5), "blocks.2.w": (4, 5), "blocks.2.big": (32, 32), "head.weight": (3, 4)}
BLOCKS = 3


@pytest.fixture
def models(tmp_path):
    """A base and three fine-tunes of it (plain state dicts), in tmp_path; returns their float64 arrays."""
    generator = torch.Generator().manual_seed(0)
    arrays = {}
    base = {k: torch.randn(s, generator=generator) for k, s in SHAPES.items()}
    for name in ("base", "a", "b", "c"):
        state = base if name == "base" else {k: v + 0.3 * torch.randn(v.shape, generator=generator) for k, v in base.items()}
        state = {**state, "bn.running_var": torch.rand(4, generator=generator) + 0.5}
        save_file(state, tmp_path / f"{name}.safetensors")
        arrays[name] = {k: v.double().numpy() for k, v in state.items()}
    return arrays


def run(tmp_path, config: dict, *flags: str):
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(cli, ["soup", "--config", str(tmp_path / "merge.yaml"), "--out", str(out), *flags])
    return result, out


def merged(tmp_path, config: dict, *flags: str) -> dict[str, np.ndarray]:
    result, out = run(tmp_path, config, *flags)
    assert result.exit_code == 0, result.output
    return {k: v.double().numpy() for k, v in load_file(out).items()}


def position(key: str) -> float:
    """block b of 3 at b / 2; other tensors at 0 (mergekit's gradient positions)."""
    return int(key.split(".")[1]) / (BLOCKS - 1) if key.startswith("blocks.") else 0.0


def gradient(values: list[float], t: float) -> float:
    return float(np.interp(t, np.linspace(0, 1, len(values)), values))


def magnitude_mask(tau: np.ndarray, density: float) -> np.ndarray:
    keep = int(density * tau.size)
    order = sorted(range(tau.size), key=lambda j: -abs(tau.flat[j]))  # stable: the first of equals
    mask = np.zeros(tau.size)
    mask[order[:keep]] = 1
    return mask.reshape(tau.shape)


def task_arithmetic_family(base, thetas, weights, masks, consensus: bool, normalize: bool, lam: float) -> np.ndarray:
    """mergekit's GTA for one tensor, entry by entry."""
    deltas = [(theta - base) * mask * w for theta, mask, w in zip(thetas, masks, weights)]
    out = np.zeros(base.size)
    for j in range(base.size):
        values = [d.flat[j] for d in deltas]
        if consensus:
            majority = 1.0 if sum(values) >= 0 else -1.0
            kept = [i for i, v in enumerate(values) if np.sign(v) == majority]
            total, divisor = sum(values[i] for i in kept), sum(weights[i] for i in kept) or 1.0
        else:
            total, divisor = sum(values), (sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0)
        out[j] = (total / divisor if normalize else total) * lam
    return base + out.reshape(base.shape)


def close(found: np.ndarray, expected: np.ndarray) -> bool:
    return float(np.abs(found - expected).max()) <= TOLERANCE * max(1.0, float(np.abs(expected).max()))


def test_linear(models, tmp_path):
    config = {"models": [{"model": str(tmp_path / "a.safetensors"), "parameters": {"weight": 0.2}},
                         {"model": str(tmp_path / "b.safetensors"), "parameters": {"weight": 0.8}}],
              "merge_method": "linear"}  # fmt: skip
    soup = merged(tmp_path, config)
    for key in soup:  # BatchNorm statistics too: a convex combination
        assert close(soup[key], (0.2 * models["a"][key] + 0.8 * models["b"][key]) / 1.0), key
    config["parameters"] = {"normalize": False}
    config["models"][1]["parameters"]["weight"] = 1.5
    soup = merged(tmp_path, config, "--overwrite")
    assert close(soup["blocks.0.w"], 0.2 * models["a"]["blocks.0.w"] + 1.5 * models["b"]["blocks.0.w"])


def test_task_arithmetic_with_a_gradient_weight(models, tmp_path):
    config = {"models": [{"model": str(tmp_path / "base.safetensors")},
                         {"model": str(tmp_path / "a.safetensors"), "parameters": {"weight": 0.5}},
                         {"model": str(tmp_path / "b.safetensors"), "parameters": {"weight": [0.0, 1.0, 0.2]}}],
              "merge_method": "task_arithmetic", "base_model": str(tmp_path / "base.safetensors"),
              "parameters": {"lambda": 0.8}}  # fmt: skip
    soup = merged(tmp_path, config)
    for key in SHAPES:
        weights = [0.5, gradient([0.0, 1.0, 0.2], position(key))]
        expected = task_arithmetic_family(models["base"][key], [models["a"][key], models["b"][key]], weights,
                                          [1, 1], consensus=False, normalize=False, lam=0.8)  # fmt: skip
        assert close(soup[key], expected), key
    assert close(soup["bn.running_var"], (models["a"]["bn.running_var"] + models["b"]["bn.running_var"]) / 2)


@pytest.mark.parametrize("normalize", [None, False])
def test_ties_per_model_density_and_weight(models, tmp_path, normalize):
    config = {"models": [{"model": str(tmp_path / f"{name}.safetensors"), "parameters": params} for name, params in
                         (("a", {"weight": 1.0, "density": 0.5}), ("b", {"weight": 0.7, "density": 0.3}),
                          ("c", {"weight": [{"filter": "head", "value": 2.0}, {"value": 0.4}], "density": 0.9}))],
              "merge_method": "ties", "base_model": str(tmp_path / "base.safetensors"),
              "parameters": {"lambda": 0.9, **({"normalize": normalize} if normalize is not None else {})}}  # fmt: skip
    soup = merged(tmp_path, config)
    for key in SHAPES:
        base, thetas = models["base"][key], [models[n][key] for n in "abc"]
        masks = [magnitude_mask(theta - base, d) for theta, d in zip(thetas, (0.5, 0.3, 0.9))]
        weights = [1.0, 0.7, 2.0 if "head" in key else 0.4]
        expected = task_arithmetic_family(base, thetas, weights, masks, consensus=True,
                                          normalize=normalize is None, lam=0.9)  # fmt: skip
        assert close(soup[key], expected), key


def test_dare_at_density_one_is_its_dense_method_and_drops_keep_the_l1_norm(models, tmp_path):
    names = ("a", "b")
    for method, consensus in (("dare_linear", False), ("dare_ties", True)):
        config = {"models": [{"model": str(tmp_path / f"{n}.safetensors"), "parameters": {"weight": 0.6}} for n in names],
                  "merge_method": method, "base_model": str(tmp_path / "base.safetensors")}  # fmt: skip
        soup = merged(tmp_path, config, "--overwrite")
        for key in SHAPES:
            expected = task_arithmetic_family(models["base"][key], [models[n][key] for n in names], [0.6, 0.6], [1, 1],
                                              consensus=consensus, normalize=False, lam=1.0)  # fmt: skip
            assert close(soup[key], expected), (method, key)
    config = {"models": [{"model": str(tmp_path / "a.safetensors"), "parameters": {"weight": 1.0, "density": 0.5}}],
              "merge_method": "dare_linear", "base_model": str(tmp_path / "base.safetensors")}  # fmt: skip
    soup = merged(tmp_path, config, "--overwrite")
    delta, tau = soup["blocks.2.big"] - models["base"]["blocks.2.big"], models["a"]["blocks.2.big"] - models["base"]["blocks.2.big"]
    kept = np.abs(delta) > 1e-6
    assert 0.4 < kept.mean() < 0.6  # 1,024 entries each kept with probability 0.5
    assert abs(np.abs(delta).sum() - np.abs(tau).sum()) <= 1e-4 * np.abs(tau).sum()  # rescaled to its L1 norm
    assert close(delta[kept], tau[kept] * np.abs(tau).sum() / np.abs(tau[kept]).sum())
    again = merged(tmp_path, config, "--overwrite")
    other = merged(tmp_path, config, "--overwrite", "--seed", "1")
    assert np.array_equal(again["blocks.2.big"], soup["blocks.2.big"])  # seeded: repeatable
    assert not np.array_equal(other["blocks.2.big"], soup["blocks.2.big"])


def test_slerp_with_a_filter_and_a_gradient(models, tmp_path):
    config = {"models": [{"model": str(tmp_path / "base.safetensors")}, {"model": str(tmp_path / "a.safetensors")}],
              "merge_method": "slerp", "base_model": str(tmp_path / "base.safetensors"),
              "parameters": {"t": [{"filter": "head", "value": 0.3}, {"value": [0.0, 1.0]}]}}  # fmt: skip
    soup = merged(tmp_path, config)
    for key in SHAPES:
        t = 0.3 if "head" in key else position(key)
        expected = _mergekit_slerp(t, torch.from_numpy(models["base"][key]), torch.from_numpy(models["a"][key])).numpy()
        assert close(soup[key], expected), key
    assert close(soup["blocks.0.w"], models["base"]["blocks.0.w"]) and close(soup["blocks.2.w"], models["a"]["blocks.2.w"])


def test_model_stock(models, tmp_path):
    config = {"models": [{"model": str(tmp_path / f"{n}.safetensors")} for n in ("base", "a", "b", "c")],
              "merge_method": "model_stock", "base_model": str(tmp_path / "base.safetensors")}
    soup = merged(tmp_path, config)
    for key in SHAPES:
        base = models["base"][key].ravel()
        offsets = [models[n][key].ravel() - base for n in "abc"]
        pairs = [(i, j) for i in range(3) for j in range(i + 1, 3)]
        cos = np.mean([offsets[i] @ offsets[j] / (np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j])) for i, j in pairs])
        t = 3 * cos / (1 + 2 * cos)
        expected = t * np.mean([models[n][key] for n in "abc"], axis=0) + (1 - t) * models["base"][key]
        assert close(soup[key], expected), key


def test_hub_folders_dtype_and_the_record(models, tmp_path):
    """A model may be a hub folder (its model.safetensors); dtype is the output's."""
    import json
    import shutil

    from adapt.merging.tensors import TensorFile

    (tmp_path / "hub").mkdir()
    shutil.copy(tmp_path / "b.safetensors", tmp_path / "hub" / "model.safetensors")
    config = {"models": [{"model": str(tmp_path / n), "parameters": {"weight": 1}} for n in ("a.safetensors", "hub")],
              "merge_method": "linear", "dtype": "bfloat16"}  # fmt: skip
    result, out = run(tmp_path, config)
    assert result.exit_code == 0, result.output
    soup = load_file(out)
    assert all(v.dtype == torch.bfloat16 for v in soup.values())
    expected = torch.from_numpy((models["a"]["head.weight"] + models["b"]["head.weight"]) / 2).bfloat16()
    assert torch.equal(soup["head.weight"], expected)
    record = json.loads(TensorFile(out).metadata["soup"])
    assert record["recipe"] == "mergekit:linear" and len(record["ingredients"]) == 2


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


A, B, BASE = "{T}/a.safetensors", "{T}/b.safetensors", "{T}/base.safetensors"
TIES = {"models": [{"model": A, "parameters": {"weight": 1}}, {"model": B, "parameters": {"weight": 1}}],
        "merge_method": "ties", "base_model": BASE}
BAD = [  # (config changes, extra flags, phrase)
    ({"slices": []}, [], "mergekit's 'slices' is not read by adapt"),
    ({"tokenizer_source": "base"}, [], "mergekit's 'tokenizer_source' is not read"),
    ({"merge_method": "della"}, [], "merge_method 'della' is not one adapt shares with mergekit"),
    ({"merge_method": "ties", "base_model": None}, [], "merge_method ties needs base_model"),
    ({"parameters": {"gamma": 0.1}}, [], "merge_method ties has no parameter 'gamma'"),
    ({"parameters": {"lambda": "big"}}, [], "parameters.lambda takes a number"),
    ({"parameters": {"lambda": [{"filter": 3, "value": 1}]}}, [], "a filter is part of a tensor name"),
    ({"parameters": {"lambda": [{"when": "x", "value": 1}]}}, [], "each entry of a conditional"),
    ({"models": [{"model": A}, {"model": B, "parameters": {"weight": 1}}]}, [], "the parameter 'weight' of model 1 is required"),
    ({"models": [{"model": A, "parameters": {"weight": 1, "t": 0.5}}]}, [], "takes no per-model 't' (it takes density, weight)"),
    ({"models": [{"model": A, "parameters": {"weight": 1, "density": 1.5}}]}, [], "density of model 1"),
    ({"models": [{"model": A, "parameters": {"weight": 1, "density": 0.01}}]}, [], "keeps no entry of"),
    ({"models": [{"model": A, "lora": "x"}]}, [], "model 1 has 'lora', which adapt does not read"),
    ({"models": "a.safetensors"}, [], "models is a list of"),
    ({"models": [{"model": 3}]}, [], "model 1 is not {model: PATH"),
    ({"dtype": "int8"}, [], "dtype 'int8' is not one of"),
    ({"merge_method": "slerp", "models": [{"model": A}, {"model": B}], "parameters": {"t": 0.5}}, [],
     "slerp interpolates base_model and one other model; got 2"),
    ({"merge_method": "slerp", "models": [{"model": A, "parameters": {"weight": 1}}]}, [],
     "merge_method slerp takes no per-model parameters"),
    ({"merge_method": "slerp", "models": [{"model": A}]}, [], "the parameter 't' is required"),
    ({"merge_method": "model_stock", "models": [{"model": A}, {"model": B}], "parameters": {"filter_wise": True}}, [],
     "filter_wise: true"),
    ({"merge_method": "linear", "base_model": BASE}, [], "base_model"),
    ({}, ["--recipe", "uniform"], "--recipe does not go with mergekit config"),
    ({}, ["--scale", "2"], "--scale does not go with mergekit config"),
    ({}, [A], "ingredients do not go with mergekit config"),
    ({"models": [{"model": "{T}/missing.safetensors", "parameters": {"weight": 1}}]}, [], "missing.safetensors"),
]


@pytest.mark.parametrize("changes, flags, phrase", BAD, ids=[case[2][:40] for case in BAD])
def test_bad_mergekit_configs(models, tmp_path, changes, flags, phrase):
    config = yaml.safe_load(yaml.safe_dump({**TIES, **changes}).replace("{T}", str(tmp_path)))
    config = {k: v for k, v in config.items() if v is not None}
    before = {p.name: _sha(p) for p in tmp_path.glob("*.safetensors")}
    result, out = run(tmp_path, config, *[f.replace("{T}", str(tmp_path)) for f in flags])
    assert_one_line(result, phrase, 1)
    assert not out.exists() and {p.name: _sha(p) for p in tmp_path.glob("*.safetensors")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file or lock left
