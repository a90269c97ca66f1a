"""`adapt presets`: the papers' recipes that --preset applies, and every value with its source."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.table import Table

from adapt.cli.common import cli, console, described


@cli.group(invoke_without_command=True)
@click.pass_context
def presets(ctx: click.Context) -> None:
    """The papers' recipes: `adapt tune --preset NAME` (and soup, perceptual-init) applies one.

    \b
    Examples:
      adapt presets                       # one line each: command, what it reproduces
      adapt presets show ssf-vtab         # every value, its source, and each task's own values
      adapt presets show ties --json
    """
    from adapt.presets import PRESETS

    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="presets (adapt presets show NAME)")
    for column in ("preset", "for", "method"):
        table.add_column(column, no_wrap=True)
    for preset in PRESETS.values():
        method = preset.values.get("method") or preset.values.get("recipe") or preset.values.get("optimizer", "")
        table.add_row(preset.name, f"adapt {preset.command}", str(method))
    console.print(table)
    lines = {p.name: f"{p.reproduces}. Source: {p.sources[next(iter(p.sources))].split(' : ')[0]}" for p in PRESETS.values()}
    console.print(described(lines, "What each reproduces:"), soft_wrap=False)


@presets.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the preset as one JSON object.")
def show(name: str, as_json: bool) -> None:
    """Every value of a preset with the file it comes from, per VTAB-1k task where they differ.

    \b
    Example:
      adapt presets show spt-lora-vtab
    """
    from adapt.errors import AdaptError
    from adapt.presets import PRESETS

    if name not in PRESETS:
        import difflib

        near = difflib.get_close_matches(name, list(PRESETS), n=1)
        raise AdaptError(f"no preset {name!r}{f' (did you mean {near[0]!r}?)' if near else ''}; adapt presets lists them")
    preset = PRESETS[name]
    if as_json:
        console.print(json.dumps(asdict(preset), indent=2), soft_wrap=True)
        return
    console.print(f"{preset.name} (adapt {preset.command} --preset {preset.name}): {preset.reproduces}", style="bold")
    values = Table(title="values")
    for column in ("option", "value", "source"):
        values.add_column(column, overflow="fold")
    per_task = sorted({key for task in preset.per_task.values() for key in task})
    for key, value in preset.values.items():
        values.add_row(f"--{key.replace('_', '-')}", json.dumps(value), preset.sources.get(key, ""))
    for key in per_task:
        values.add_row(f"--{key.replace('_', '-')}", "per task (below)", preset.sources.get(key, ""))
    console.print(values)
    if preset.per_task:
        tasks = Table(title="per VTAB-1k task")
        tasks.add_column("task")
        for key in per_task:
            tasks.add_column(key, justify="right")
        for task, row in preset.per_task.items():
            tasks.add_row(task, *[f"{row[key]:g}" if isinstance(row.get(key), float) else str(row.get(key, "")) for key in per_task])
        console.print(tasks)
    if preset.weights is not None:
        from adapt.weights_identity import DESCRIPTIONS

        console.print(f"published with: {DESCRIPTIONS.get(preset.weights, preset.weights)} (a run on other weights says so)")
    for note in preset.notes:
        console.print(f"note: {note}")
    if preset.paper is not None:
        means = [f"{label} {value}" for label, value in (("mean of 19 tasks", preset.paper.plain_mean),
                 ("mean of the 3 group means", preset.paper.group_mean)) if value is not None]  # fmt: skip
        console.print(f"paper: {', '.join(means)} ({preset.paper.source})")
