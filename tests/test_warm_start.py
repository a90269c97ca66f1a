"""`--init-from`: a run starts from a trained checkpoint's head (LP-FT), or its head and adapter (same method)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from adapt.checkpoint import read_checkpoint, save_checkpoint
from adapt.cli import cli
from adapt.errors import AdaptError
from adapt.train import TrainConfig
from adapt.tuning import TuneJob, prepare, tune

QUICK = dict(image_size=32, limit=64)
CONFIG = TrainConfig(epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A linear probe: the first step of LP-FT."""
    out = tmp_path_factory.mktemp("probe")
    tune(TuneJob(method="linear", **QUICK), CONFIG, out)
    return out / "adapter.safetensors"


def test_lp_ft_starts_from_the_probes_head(probe):
    heard = []
    adapted, _ = prepare(TuneJob(method="ssf", init_from=str(probe), **QUICK), "digits", CONFIG, heard.append)
    trained = load_file(probe)
    state = adapted.model.state_dict()
    heads = [k for k in trained if k.startswith("classifier.")]
    assert heads and all(torch.equal(state[k], trained[k]) for k in heads)
    assert heard == [f"starting from the head of {probe}"]
    fresh, _ = prepare(TuneJob(method="ssf", **QUICK), "digits", CONFIG)
    assert not torch.equal(fresh.model.state_dict()[heads[0]], trained[heads[0]])  # a fresh head differs


def test_the_same_method_starts_from_the_whole_adapter(probe, tmp_path):
    first = tmp_path / "first"
    tune(TuneJob(method="ssf", init_from=str(probe), **QUICK), CONFIG, first)
    adapted, _ = prepare(TuneJob(method="ssf", init_from=str(first / "adapter.safetensors"), **QUICK), "digits", CONFIG)
    own = adapted.method.trainable_state(adapted.model)
    saved = load_file(first / "adapter.safetensors")
    assert set(own) == set(saved) and all(torch.equal(own[k], saved[k]) for k in own)


def test_spt_keeps_the_checkpoints_allocation(tmp_path):
    options = {"rank": 2, "budget": "5k", "sensitivity_batches": 1, "sensitivity_batch_size": 8}
    tune(TuneJob(method="spt", options=options, **QUICK), CONFIG, tmp_path / "spt")
    _, meta = read_checkpoint(tmp_path / "spt" / "adapter.safetensors")
    adapted, _ = prepare(TuneJob(method="spt", init_from=str(tmp_path / "spt" / "adapter.safetensors"), **QUICK),
                         "digits", CONFIG)  # fmt: skip
    assert adapted.method.config.unstructured == meta.method_options["unstructured"]
    assert adapted.method.config.structured == meta.method_options["structured"]


def test_a_checkpoint_of_other_classes_or_a_merged_model_is_refused(probe, tmp_path):
    tensors, meta = read_checkpoint(probe)
    meta.class_names = list(reversed(meta.class_names))
    save_checkpoint(tmp_path / "reordered.safetensors", tensors, meta)
    with pytest.raises(AdaptError, match="other classes \\(in another order\\)"):
        prepare(TuneJob(method="ssf", init_from=str(tmp_path / "reordered.safetensors"), **QUICK), "digits", CONFIG)
    result = CliRunner().invoke(cli, ["merge", str(probe), "--out", str(tmp_path / "merged.safetensors")])
    assert result.exit_code == 0, result.output
    with pytest.raises(AdaptError, match="is a merged model"):
        prepare(TuneJob(method="ssf", init_from=str(tmp_path / "merged.safetensors"), **QUICK), "digits", CONFIG)


def test_overwrite_never_replaces_the_checkpoint_it_starts_from(probe, tmp_path):
    run = tmp_path / "run"
    tune(TuneJob(method="linear", **QUICK), CONFIG, run)
    before = (run / "adapter.safetensors").read_bytes()
    result = CliRunner().invoke(cli, ["tune", "--init-from", str(run / "adapter.safetensors"), "--out", str(run),
                                      "--overwrite", "--image-size", "32", "--limit", "64", "--epochs", "1"])  # fmt: skip
    assert result.exit_code == 1 and "--init-from" in result.output and "would replace" in result.output
    assert (run / "adapter.safetensors").read_bytes() == before


def test_cli_init_from_records_it_for_resume(probe, tmp_path):
    out = tmp_path / "lpft"
    result = CliRunner().invoke(cli, ["tune", "--init-from", str(probe), "--out", str(out), "--image-size", "32",
                                      "--limit", "64", "--epochs", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "starting from the head of" in result.output
    assert f"init_from: {probe}" in (out / "config.yaml").read_text()
