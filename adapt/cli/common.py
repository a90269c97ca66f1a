"""The `adapt` click group, its error handling and the options commands share."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from adapt.errors import AdaptError

# Under torchrun / accelerate launch every process runs this command; only rank 0 prints.
console = Console(quiet=int(os.environ.get("RANK", "0")) != 0, soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class AdaptGroup(click.Group):
    """Turns AdaptError into one red line and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdaptError as error:
            errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            sys.exit(1)


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
