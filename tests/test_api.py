"""The Python API (adapt.api): each call is its command's library call, and adapt.load gives a torch module
that timm's data pipeline preprocesses as `adapt predict` does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from PIL import Image

import adapt
from adapt.errors import AdaptError

QUICK = {"image_size": 32, "limit": 48, "epochs": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "ssf"
    result = adapt.tune(folder, method="ssf", data="digits", seed=0, **QUICK)
    assert 0 <= result.test_acc <= 1
    return folder


def test_import_adapt_loads_no_torch_and_names_the_api():
    code = "import sys, adapt; print('torch' in sys.modules, sorted(adapt.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    for name in ("load", "tune", "evaluate", "predict", "merge", "soup", "continual"):
        assert f"'{name}'" in out and callable(getattr(adapt, name))


def _images(folder, count: int = 3) -> list:
    """A few RGB images of varied content and size."""
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        pixels = (torch.rand(20 + 7 * i, 30 + 5 * i, 3, generator=generator) * 255).byte().numpy()
        paths.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.mark.parametrize("kind", ["run folder", "merged file", "hub folder"])
def test_load_is_a_module_that_timm_preprocesses_as_predict_does(run, tmp_path, kind):
    import timm

    source = {"run folder": run, "merged file": tmp_path / "merged.safetensors", "hub folder": f"{tmp_path / 'hub'}/"}[kind]
    if kind != "run folder":
        adapt.merge(run, source)
    model = adapt.load(source)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert model.to("cpu") is model and len(model.state_dict()) > 0
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0
    from adapt.data.digits import DIGIT_NAMES

    assert list(model.pretrained_cfg["label_names"]) == list(DIGIT_NAMES)
    transform = timm.data.create_transform(**config)
    images = _images(tmp_path)
    predictions = adapt.predict(source, images, top_k=10).predictions
    with torch.no_grad():
        probabilities = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])).softmax(-1)
    names = model.pretrained_cfg["label_names"]
    for row, prediction in zip(probabilities, predictions):
        ours = {name: float(row[names.index(name)]) for name, _ in prediction.top}
        assert all(abs(ours[name] - value) <= 1e-6 for name, value in prediction.top), (ours, prediction.top)


def test_the_api_calls_return_results_and_check_their_options(run, tmp_path):
    scores = adapt.evaluate(run, split="val")
    assert 0 <= scores.accuracy <= 1 and scores.split == "val"
    merged = adapt.merge(run, tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").is_file() and merged is not None
    summary = adapt.soup([run / "adapter.safetensors", run / "adapter.safetensors"], tmp_path / "s.safetensors",
                         coeffs=[1, 3])  # fmt: skip
    assert summary.recipe == "weighted" and (tmp_path / "s.safetensors").is_file()
    with pytest.raises(AdaptError, match="unknown option 'epoch' \\(did you mean 'epochs'\\?\\)"):
        adapt.tune(tmp_path / "x", epoch=3)
    with pytest.raises(AdaptError, match="lr"):
        adapt.tune(tmp_path / "x", lr=-1.0)
    with pytest.raises(AdaptError, match="recipe uniform does not use scale"):
        adapt.soup([run, run], tmp_path / "t.safetensors", scale=2.0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "t.safetensors").exists()


def test_continual_sets_both_seeds_and_says_a_line_per_task(tmp_path, capsys):
    import json

    seen = []
    result = adapt.continual(tmp_path / "cl", head="linear", seed=3, on_task_end=lambda task, matrix, model: seen.append(task.index),
                             **QUICK)  # fmt: skip
    assert seen == [0, 1, 2, 3, 4] and len(result.matrix) == 5
    err = capsys.readouterr().err
    assert err.count("after task") == 5 and "trains one step per epoch" in err  # 48 images per split: one batch
    from adapt.continual_learning import class_incremental

    setup = json.loads((tmp_path / "cl" / "continual.json").read_text())["setup"]
    assert setup["train"]["seed"] == 3  # the training seed, as --seed sets it ...
    assert setup["class_order"] == class_incremental(seed=3, image_size=32, limit=48).class_names  # ... and the order
    assert setup["class_order"] != class_incremental(seed=0, image_size=32, limit=48).class_names
    with pytest.raises(AdaptError, match="already holds a run.*overwrite"):
        adapt.continual(tmp_path / "cl", head="linear", quiet=True, **QUICK)
