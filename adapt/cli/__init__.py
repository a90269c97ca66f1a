"""The `adapt` command: parse arguments, call the library, print with rich. No logic here."""

from adapt.cli import continual_commands, merge_commands, spt_commands, train_commands  # noqa: F401  (registers the commands)
from adapt.cli.common import cli


def main() -> None:
    cli(prog_name="adapt")


__all__ = ["cli", "main"]
