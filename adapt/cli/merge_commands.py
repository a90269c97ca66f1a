"""Commands that fold or combine what was learned: merge, export, import-peft, soup."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from adapt.cli.common import cli, console, weights_option
from adapt.errors import AdaptError


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Where to write the merged .safetensors.")
@click.option("--fold-bn", is_flag=True, help="Also fold BatchNorm into the conv before it (for deployment).")
@weights_option
def merge(checkpoint, out, fold_bn, weights) -> None:
    """Fold an adapter into the backbone's weights: a plain timm state dict, no extra cost.

    The result loads with timm.create_model(NAME, num_classes=K).load_state_dict(...)
    and does not need adapt.

    \b
    Example:
      adapt merge runs/tune/adapter.safetensors --out merged.safetensors
    """
    from adapt.adapted import AdaptedModel
    from adapt.merge.reparam import merge_adapted, save_merged

    adapted, _ = AdaptedModel.from_checkpoint(checkpoint, weights)
    model, report = merge_adapted(adapted, fold_bn)
    save_merged(out, model, adapted)
    folded = f", {report.batchnorms_folded} BatchNorms folded into convs" if fold_bn else ""
    console.print(
        f"merged {report.method} into {adapted.backbone.name} in {report.seconds * 1000:.0f} ms, "
        f"peak extra memory {report.peak_extra_bytes / 2**20:.2f} MiB "
        f"(largest tensor {report.largest_tensor_bytes / 2**20:.2f} MiB){folded} -> {out}"
    )


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["peft"]), default="peft", show_default=True)
@weights_option
def export(checkpoint, out_dir, fmt, weights) -> None:
    """Write a LoRA checkpoint in peft's layout (adapter_config.json + adapter_model.safetensors).

    \b
    Example:
      adapt export runs/lora/adapter.safetensors --format peft exported/
      # then: PeftModel.from_pretrained(timm.create_model(NAME, num_classes=K), "exported/")
    """
    from adapt.peft_format import export_peft

    console.print(f"wrote peft adapter folder {export_peft(checkpoint, out_dir, weights)}")


@cli.command("import-peft")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The adapter checkpoint to write.")
@click.option("--backbone", default=None, help="timm name, when the folder does not record it.")
@weights_option
def import_peft(folder, out, backbone, weights) -> None:
    """Read a peft LoRA folder into an adapt checkpoint (for eval, predict, merge).

    \b
    Example:
      adapt import-peft exported/ --out lora.safetensors
    """
    from adapt.peft_format import import_peft as read_folder

    meta = read_folder(folder, out, backbone, weights)
    console.print(f"wrote {out}: lora rank {meta.method_options['rank']} on {meta.backbone}, {len(meta.class_names)} classes")


RECIPES = ["uniform", "weighted", "task-arithmetic", "ties", "dare"]
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def parse_size(text: str | None) -> int | None:
    """'2GB', '500MB', '64KB' or a byte count."""
    if text is None:
        return None
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
    upper = str(text).strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit) and upper[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(upper[: -len(unit)]) * factor)
    if upper.isdigit():
        return int(upper)
    raise AdaptError(f"cannot read size {text!r}: use e.g. 2GB, 500MB or a byte count")


def _apply_config(ctx: click.Context, path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Values from a YAML file for every option not given on the command line."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise AdaptError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise AdaptError(f"config {path} must be a mapping of option: value")
    for key, value in config.items():
        name = key.replace("-", "_")
        if name not in values:
            raise AdaptError(f"config {path}: unknown key '{key}'")
        if ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
            values[name] = tuple(value) if isinstance(value, list) else value
    return values


@cli.command()
@click.argument("ingredients", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output .safetensors (required here or in --config).")
@click.option("--recipe", type=click.Choice(RECIPES), default="uniform", show_default=True)
@click.option("--weights", default=None, help="Weighted soup: one weight per ingredient, e.g. 0.2,0.5,0.3.")
@click.option("--greedy", is_flag=True, help="Greedy soup: add by held-out accuracy (needs --data).")
@click.option("--data", default=None, help="Held-out data for --greedy, e.g. digits.")
@click.option("--split", type=click.Choice(["val", "test", "train"]), default="val", show_default=True)
@click.option("--base", type=click.Path(path_type=Path), default=None, help="Pretrained model (task-arithmetic, ties, dare).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="lambda on the merged task vector.")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.2, show_default=True, help="TIES: share kept.")
@click.option("--drop", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True, help="DARE: drop rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="DARE's random drops.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None, help="Output dtype (default: the inputs').")
@click.option("--max-shard-size", default=None, help="Split the output into shards, e.g. 2GB.")
@click.option("--backbone", default=None, help="timm name, for --greedy on state dicts that do not record it.")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="YAML with any of these options (+ ingredients).")
@click.pass_context
def soup(ctx, **values) -> None:
    """Average or merge checkpoints of one model, streaming tensor by tensor.

    Ingredients are full state dicts (.safetensors, or .pth read with weights_only) or
    adapter checkpoints of one method and backbone (the soup is then an adapter
    checkpoint that adapt merge folds). Memory does not grow with their number.

    \b
    Examples:
      adapt soup a.safetensors b.safetensors c.safetensors --out soup.safetensors
      adapt soup a b c --weights 0.2,0.5,0.3 --out soup.safetensors
      adapt soup a b c --greedy --data digits --split val --out greedy.safetensors
      adapt soup ft1 ft2 --recipe ties --base pretrained.safetensors --density 0.2 --out ties.safetensors
      adapt soup --config soup.yaml
    """
    import torch
    from rich.progress import Progress

    from adapt.merge import arithmetic
    from adapt.merge.soup import greedy_soup, held_out_accuracy, stream_soup
    from adapt.merge.tensors import TensorFile

    if values["config"] is not None:
        values = _apply_config(ctx, values["config"], values)
    paths = [Path(p) for p in values["ingredients"]]
    if not paths:
        raise AdaptError("name the ingredients: adapt soup A B [C ...] (or ingredients: in --config)")
    out = values["out"]
    if out is None:
        raise AdaptError("say where to write the soup: --out PATH (or out: in --config)")
    dtype = getattr(torch, values["dtype"]) if values["dtype"] else None
    if values["greedy"]:
        if not values["data"]:
            raise AdaptError("--greedy needs held-out data: --data SPEC (e.g. digits) and --split")
        accuracy = held_out_accuracy(paths[0], values["data"], values["split"], values["backbone"])
        table = Table(title="greedy soup")
        for column in ("ingredient", "own accuracy", "soup accuracy", "added"):
            table.add_column(column)
        summary = greedy_soup(paths, out, accuracy, dtype, on_step=lambda step: table.add_row(
            step.ingredient, f"{step.own_accuracy:.2%}", f"{step.soup_accuracy:.2%}", "yes" if step.added else "no"))  # fmt: skip
        console.print(table)
    else:
        recipe = "weighted" if values["weights"] and values["recipe"] == "uniform" else values["recipe"]
        method = {
            "uniform": lambda: arithmetic.Uniform(),
            "weighted": lambda: arithmetic.Weighted(_floats(values["weights"])),
            "task-arithmetic": lambda: arithmetic.TaskArithmetic(values["scale"]),
            "ties": lambda: arithmetic.Ties(values["density"], values["scale"]),
            "dare": lambda: arithmetic.Dare(values["scale"], values["drop"], values["seed"]),
        }[recipe]()
        total = len(TensorFile(paths[0]).keys)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("merging tensors", total=total)
            summary = stream_soup(paths, out, method, values["base"], dtype, parse_size(values["max_shard_size"]),
                                  on_tensor=lambda key: progress.advance(task))  # fmt: skip
    rows = [
        ("ingredients", str(len(summary.ingredients))),
        ("recipe", summary.recipe),
        ("tensors", f"{summary.tensors:,}"),
        ("written", f"{summary.bytes_written / 2**20:.1f} MiB"),
        ("time", f"{summary.seconds:.2f} s"),
        ("peak memory (RSS)", f"{summary.peak_rss_bytes / 2**20:.0f} MiB"),
        ("output", ", ".join(summary.outputs)),
    ]
    summary_table = Table(show_header=False, title="soup")
    for label, value in rows:
        summary_table.add_row(label, value)
    console.print(summary_table)


def _floats(text: str | Sequence[float]) -> list[float]:
    try:
        return [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise AdaptError(f"--weights expects numbers separated by commas, got {text!r}") from None
