"""The examples run as a researcher runs them (shrunk: tiny images, few images, one epoch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_continual_study_runs_over_seeds_and_learners(tmp_path):
    out = tmp_path / "study"
    command = [sys.executable, str(ROOT / "examples" / "continual_digits.py"), "--epochs", "1", "--seeds", "0,1",
               "--heads", "linear", "--learners", "naive,lwf", "--image-size", "32", "--limit", "40", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # the adapt of this tree
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    per_seed = [line for line in lines if line.split()[:2] in (["linear", "naive"], ["linear", "lwf"])]
    assert len(per_seed) == 6  # two seeds and a mean, for each learner
    assert sum(" ± " in line for line in per_seed) == 2
    assert sorted(p.name for p in out.iterdir()) == ["linear-lwf-seed0", "linear-lwf-seed1", "linear-naive-seed0",
                                                     "linear-naive-seed1"]  # fmt: skip
    assert "after task 5 of 5" in result.stderr  # a line per task, as the command prints
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode != 0 and "already holds a run" in again.stderr  # each run its own folder, never replaced
