"""The `adapt` command: parse arguments, call the library, print with rich. No logic here."""

import signal

from adapt.cli import continual_commands, merge_commands, spt_commands, train_commands  # noqa: F401  (registers the commands)
from adapt.cli.common import cli


def main() -> None:
    # With a file size limit (ulimit -f), a write past it would kill the process (SIGXFSZ) and
    # leave its temporary file; ignored, the write fails with EFBIG and ends in one line.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    cli(prog_name="adapt")


__all__ = ["cli", "main"]
