"""The `adapt` command: parse arguments, call the library, print with rich. No logic here."""

import signal
import sys

# registers the commands
from adapt.cli import (  # noqa: F401
    compare_commands, continual_commands, merge_commands, preset_commands, spt_commands, train_commands,
)
from adapt.cli.common import cli


def main() -> None:
    # With a file size limit (ulimit -f), a write past it would kill the process (SIGXFSZ) and
    # leave its temporary file; ignored, the write fails with EFBIG and ends in one line.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        cli(prog_name="adapt")
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch, leave the process group before the interpreter exits: a process
    whose communication threads are still up at exit can abort (std::terminate) after finishing its work."""
    distributed = sys.modules.get("torch.distributed")  # never imported just for this
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


__all__ = ["cli", "main"]
