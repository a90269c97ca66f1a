"""CLI start-up: `adapt --help`, every `adapt CMD --help` and `adapt methods`, against `python -c "import click, rich"`.

Each is run as a fresh process, 5 times; the median wall time is reported, in one run on
this machine. `adapt methods` is measured cold (an empty cache folder each time) on the
default backbone (whose table ships with adapt) and on another one (test_vit, 3 classes: it
builds every method), and warm on that other one (the table kept by an earlier call).
Writes benchmarks/results/startup.{json,md}.

    python benchmarks/startup.py
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from report import write_report

REPEATS = 5


def wall(command: list[str], cold_cache: bool = False) -> float:
    times = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as fresh:
            env = {**os.environ, **({"ADAPT_CACHE_DIR": fresh} if cold_cache else {})}
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True, env=env)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import adapt.cli

    adapt_command = shutil.which("adapt") or sys.executable
    prefix = [adapt_command] if adapt_command.endswith("adapt") else [sys.executable, "-m", "adapt"]
    baseline = wall([sys.executable, "-c", "import click, rich"])
    commands = [["--help"], *[[name, "--help"] for name in adapt.cli.cli.commands]]
    rows = []
    for args in commands:
        seconds = wall(prefix + args)
        rows.append({"command": "adapt " + " ".join(args), "seconds": seconds, "baseline_seconds": baseline})
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ADAPT_CACHE_DIR"] = cache
        other = ["methods", "--backbone", "test_vit", "--num-classes", "3"]
        runs = (("adapt methods (cold, default backbone: shipped table)", ["methods"], True),
                ("adapt methods (cold, another backbone: builds the table)", other, True),
                ("adapt methods (warm, another backbone: kept table)", other, False))  # fmt: skip
        for label, args, cold in runs:
            subprocess.run(prefix + args, capture_output=True, check=True)  # fills the warm cache
            rows.append({"command": label, "seconds": wall(prefix + args, cold), "baseline_seconds": baseline})
            print(rows[-1], flush=True)
    write_report(
        "startup", "CLI start-up (median wall time of 5 fresh processes)",
        {"baseline": 'python -c "import click, rich"', "repeats": REPEATS}, rows,
        [("command", lambda r: r["command"]), ("seconds", lambda r: f"{r['seconds']:.2f}"),
         ("vs import click, rich", lambda r: f"{r['seconds'] / r['baseline_seconds']:.1f}x")],  # fmt: skip
        footer=f"`python -c \"import click, rich\"`: {baseline:.2f} s. On the default backbone `adapt methods` reads "
               "the table shipped with adapt (no torch); on another backbone a cold call builds every method, so it "
               "imports torch, timm and peft (about 3 s of imports here), and a warm one reads the table an earlier "
               "call kept in the cache folder.",
    )  # fmt: skip


if __name__ == "__main__":
    main()
