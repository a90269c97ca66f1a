"""benchmarks/gpu_check.py, the script a lent GPU machine runs first, works: its --smoke mode on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from adapt.methods import METHODS

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_runs_every_method_and_a_preset_in_smoke_mode(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], cwd=SCRIPT.parent, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {row["method"] for row in report["rows"]} == set(METHODS)
    assert all(row["finite"] and row["images_per_s"] > 0 for row in report["rows"])
    preset = report["setup"]["preset_run"]
    assert preset["exit_code"] == 0 and preset["epochs"] == 3 and preset["best_periodic_test_acc"] is not None
    assert (tmp_path / "gpu_check.md").is_file()
    refused = subprocess.run([sys.executable, str(SCRIPT)], cwd=SCRIPT.parent, capture_output=True, text=True, timeout=120,
                             env=env)  # fmt: skip
    assert refused.returncode == 1 and "no CUDA device here" in refused.stderr
