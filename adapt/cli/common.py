"""The `adapt` click group, its error handling and the options commands share."""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from adapt.errors import AdaptError

# Under torchrun / accelerate launch every process runs this command; only rank 0 prints.
# Markup is off: paths, class names and messages are printed as the text they are.
console = Console(quiet=int(os.environ.get("RANK", "0")) != 0, soft_wrap=True, markup=False, highlight=False)
errors = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

# OSErrors that are the user's situation (disk full, read-only folder, file size limit, a
# path that is a file or a folder), not a bug: they end in one line like AdaptError.
USER_OS_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EACCES,
                  errno.EPERM, errno.EDQUOT, errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP}  # fmt: skip
REPORT = "this is a bug in adapt: please report it with the traceback above"


def one_line(error: BaseException) -> str:
    """The user-facing line of an error; a DataLoader worker's wrapped error becomes its original line."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch re-raises a worker's exception with its traceback in the message
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split()) or type(error).__name__


def fail(message: str, code: int = 1) -> None:
    errors.print(Text("error: ", style="bold red") + Text(message))
    sys.exit(code)


class AdaptGroup(click.Group):
    """Turns the user's errors into one line on stderr and a non-zero exit (no traceback).

    AdaptError (bad input), the OSErrors of a full disk, a read-only folder or a file size
    limit, running out of memory and Ctrl-C each end in one line. Anything else is a bug:
    its traceback is shown, with a line asking to report it."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Click's usage errors (bad option values, unknown options) as one line too, exit status 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as error:
            path = error.ctx.command_path if getattr(error, "ctx", None) else ""
            command = f" {path.split(' ', 1)[1]}" if " " in path else ""
            fail(f"{one_line(Exception(error.format_message()))} (see adapt{command} --help)", error.exit_code)
        except click.Abort:
            fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors and --help: click's own, handled in main
        except AdaptError as error:
            fail(one_line(error))
        except OSError as error:
            if error.errno not in USER_OS_ERRORS:
                errors.print(REPORT)
                raise
            where = f": {error.filename}" if error.filename else ""
            fail(f"{error.strerror or one_line(error)}{where}")
        except MemoryError:
            fail("out of memory: try a smaller --batch-size, --image-size or model")
        except KeyboardInterrupt:
            fail("interrupted; files are written whole or not at all, and tune --resume continues a run", 130)
        except Exception:
            errors.print(REPORT)
            raise


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--option key=value` pairs; values are read as JSON when they parse, else as strings."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise AdaptError(f"--option expects key=value, got {pair!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@click.group(cls=AdaptGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="adapt-vision")
def cli() -> None:
    """Parameter-efficient adaptation of frozen pretrained vision backbones.

    \b
    Start with:  adapt tune            (SSF on the embedded EfficientNet-Lite0 and digits)
    """


backbone_option = click.option(
    "--backbone", default="tf_efficientnet_lite0", show_default=True,
    help="A timm model name, local-dir:DIR (a hub folder) or hf-hub:ORG/NAME (from the local cache).",
)  # fmt: skip
weights_option = click.option(
    "--weights", default=None,
    help="Backbone weights: a .safetensors/.pth file, a hub folder, or 'random'. "
         "Default: embedded for Lite0, a hub folder's own; other names must say.",
)  # fmt: skip
