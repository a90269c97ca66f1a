"""`adapt compare`: each row is what the runs' summary.json files say; a folder of runs is their mean; the plot."""

import json

import pytest
from click.testing import CliRunner

import adapt
from adapt.api import tune
from adapt.cli import cli
from adapt.run_comparison import compare_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method, epochs in (("bitfit", 1), ("ssf", 2)):
        tune(root / "digits" / method, method=method, image_size=32, limit=48, epochs=epochs, batch_size=16,
             eval_every=1)  # fmt: skip
    return root


def test_rows_are_the_summaries_and_a_folder_of_runs_is_their_mean(runs):
    bitfit, ssf, both = compare_runs([runs / "digits" / "bitfit", runs / "digits" / "ssf", runs / "digits"])
    summary = json.loads((runs / "digits" / "ssf" / "summary.json").read_text())
    assert (ssf.method, ssf.trainable, ssf.final_acc) == ("ssf", summary["trainable_params"], summary["test_acc"])
    assert ssf.share == pytest.approx(summary["trainable_params"] / summary["total_params"])
    assert ssf.best_acc == summary["best_periodic_test_acc"]
    steps = sum(h["steps"] for h in summary["history"])
    assert ssf.step_seconds == pytest.approx(sum(h["seconds"] for h in summary["history"]) / steps)
    assert ssf.peak_memory == summary["peak_memory"]["bytes"] > 0
    assert both.tasks == 2 and both.method == "bitfit+ssf"
    assert both.final_acc == pytest.approx((bitfit.final_acc + ssf.final_acc) / 2)
    assert both.trainable == pytest.approx((bitfit.trainable + ssf.trainable) / 2)
    assert both.peak_memory == max(bitfit.peak_memory, ssf.peak_memory)
    assert adapt.compare([runs / "digits" / "ssf"]) == [ssf]  # the Python API's


def test_the_command_prints_the_table_and_draws_the_plot(runs, tmp_path):
    plot = tmp_path / "methods.png"
    result = CliRunner().invoke(cli, ["compare", str(runs / "digits" / "bitfit"), str(runs / "digits" / "ssf"),
                                      "--plot", str(plot)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bitfit" in result.output and "ssf" in result.output and "MiB" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(cli, ["compare", str(runs / "digits" / "ssf"), "--plot", str(plot)])
    assert again.exit_code == 1 and "exists; pass --overwrite" in again.stderr
