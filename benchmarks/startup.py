"""CLI start-up: `adapt --help`, every `adapt CMD --help` and `adapt methods`, against `python -c "import click, rich"`.

Each is run as a fresh process, 5 times; the median wall time is reported, in one run on
this machine. Writes benchmarks/results/startup.{json,md}.

    python benchmarks/startup.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

from report import write_report

REPEATS = 5


def wall(command: list[str]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import adapt.cli

    adapt_command = shutil.which("adapt") or sys.executable
    prefix = [adapt_command] if adapt_command.endswith("adapt") else [sys.executable, "-m", "adapt"]
    baseline = wall([sys.executable, "-c", "import click, rich"])
    commands = [["--help"], *[[name, "--help"] for name in adapt.cli.cli.commands], ["methods"]]
    rows = []
    for args in commands:
        seconds = wall(prefix + args)
        rows.append({"command": "adapt " + " ".join(args), "seconds": seconds, "baseline_seconds": baseline})
        print(rows[-1], flush=True)
    write_report(
        "startup", "CLI start-up (median wall time of 5 fresh processes)",
        {"baseline": 'python -c "import click, rich"', "repeats": REPEATS}, rows,
        [("command", lambda r: r["command"]), ("seconds", lambda r: f"{r['seconds']:.2f}"),
         ("vs import click, rich", lambda r: f"{r['seconds'] / r['baseline_seconds']:.1f}x")],  # fmt: skip
        footer=f"`python -c \"import click, rich\"`: {baseline:.2f} s. `adapt methods` builds every method on the "
               "backbone, so it imports torch and timm.",
    )  # fmt: skip


if __name__ == "__main__":
    main()
