"""The `adapt` command: parse arguments, call the library, print with rich."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adapt.errors import AdaptError
from adapt.methods import METHODS

# Under torchrun / accelerate launch every process runs this command; only rank 0 prints.
console = Console(quiet=int(os.environ.get("RANK", "0")) != 0)


class AdaptGroup(click.Group):
    """Turns AdaptError into one red line and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdaptError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
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
    "--backbone", default="tf_efficientnet_lite0", show_default=True, help="Any timm model name."
)
weights_option = click.option(
    "--weights", default=None, help="Backbone weights (.safetensors or .pth). Default: embedded for Lite0, else random."
)


@cli.command()
@click.option("--method", type=click.Choice(list(METHODS)), default="ssf", show_default=True)
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. init_std=0.01.")
@click.option("--data", default="digits", show_default=True, help="digits | folder:PATH | vtab:ROOT[/TASK]")
@click.option("--split-protocol", type=click.Choice(["final", "tune"]), default="final", show_default=True,
              help="VTAB: final = train800val200/test, tune = train800/val200.")  # fmt: skip
@backbone_option
@weights_option
@click.option("--image-size", type=click.IntRange(16), default=None, help="Default: 96 for digits, else the backbone's.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="Default: the method's (adapt methods).")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.05, show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Warmup share of all steps.")
@click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="Data loader processes.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images per split (quick checks).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/tune"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
def tune(method, method_options, data, split_protocol, backbone, weights, image_size, epochs, batch_size, lr,
         weight_decay, warmup, grad_accum, precision, seed, workers, limit, out, resume) -> None:  # fmt: skip
    """Train a method on a frozen backbone; write OUT/adapter.safetensors and metrics.

    \b
    Examples:
      adapt tune                                   # SSF, embedded Lite0, digits
      adapt tune --method bitfit --data folder:pets --out runs/pets
      adapt tune --data vtab:~/vtab-1k/dtd --backbone vit_base_patch16_224 --weights vit.safetensors
      adapt tune --data vtab:~/vtab-1k            # every task found, then the VTAB table
      torchrun --nproc_per_node 2 -m adapt tune    # 2 processes (or: accelerate launch -m adapt tune)
    """
    from adapt.data import expand_spec
    from adapt.data.vtab import vtab_means
    from adapt.train import TrainConfig
    from adapt.tune import TuneJob, tune as run_tune

    job = TuneJob(data, method, parse_options(method_options), backbone, weights, image_size, split_protocol, limit)
    config = TrainConfig(epochs, batch_size, lr, weight_decay, warmup, grad_accum, precision, seed, workers)
    specs = expand_spec(data)  # several when data is a VTAB root holding many tasks
    accuracies = {}
    for spec in specs:
        task = Path(spec.partition(":")[2]).name
        task_out = out / task if len(specs) > 1 else out
        result = run_tune(job, config, task_out, resume, spec, on_start=_print_start, on_epoch_end=_print_epoch)
        accuracies[task] = result.test_acc
        share = result.trainable_params / result.total_params
        console.print(
            f"[bold green]{result.test_split} accuracy {result.test_acc:.2%}[/]  ·  trained "
            f"{result.trainable_params:,} of {result.total_params:,} parameters ({share:.2%})  ·  {task_out}"
        )
    if len(specs) > 1:
        _print_vtab(accuracies, vtab_means(accuracies))


def _print_start(adapted, data) -> None:
    trainable, total = adapted.parameter_counts()
    console.print(
        f"[bold]{adapted.method.name}[/] on {adapted.backbone.name} ({adapted.backbone.weights} weights), "
        f"data {data.name}: {len(data.train)} train / {len(data.test)} {data.test_name} images, "
        f"{data.num_classes} classes, {adapted.image_size}px; training {trainable:,} of {total:,} parameters"
    )
    if adapted.method.report():
        console.print(adapted.method.report())


def _print_epoch(result) -> None:
    console.print(
        f"epoch {result.epoch}: loss {result.train_loss:.4f}  train acc {result.train_acc:.2%}  "
        f"{result.eval_split} acc {result.eval_acc:.2%}  {result.images_per_s:.0f} img/s  {result.seconds:.0f}s"
    )


def _print_vtab(accuracies: dict[str, float], means: dict[str, float | None]) -> None:
    table = Table(title="VTAB-1k")
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    for task, acc in accuracies.items():
        table.add_row(task, f"{acc:.2%}")
    for group in ("natural", "specialized", "structured"):
        if means[group] is not None:
            table.add_row(f"[italic]{group} mean", f"{means[group]:.2%}")
    table.add_row(f"[bold]plain mean of {len(accuracies)} tasks", f"{means['plain_mean']:.2%}")
    group_mean = means["group_mean"]
    table.add_row("[bold]mean of the 3 group means", f"{group_mean:.2%}" if group_mean is not None else "n/a (a group is empty)")
    console.print(table)


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Default: the data the checkpoint was trained on.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--split-protocol", type=click.Choice(["final", "tune"]), default="final", show_default=True)
@weights_option
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images.")
def evaluate(checkpoint, data, split, split_protocol, weights, batch_size, limit) -> None:
    """Accuracy of an adapter checkpoint on a split.

    \b
    Example:
      adapt eval runs/tune/adapter.safetensors --split test
    """
    from accelerate import Accelerator

    from adapt.adapted import AdaptedModel
    from adapt.data import load_data
    from adapt.evaluate import accuracy

    adapted, meta = AdaptedModel.from_checkpoint(checkpoint, weights)
    spec = data or meta.training.get("data")
    if not spec:
        raise AdaptError(f"{checkpoint} does not record its data; pass --data")
    splits = load_data(spec, adapted.image_size, adapted.mean, adapted.std, split_protocol, limit)
    dataset = getattr(splits, split)
    if dataset is None:
        raise AdaptError(f"{spec} has no {split} split")
    if splits.num_classes != len(adapted.class_names):
        raise AdaptError(f"{spec} has {splits.num_classes} classes, the checkpoint {len(adapted.class_names)}")
    acc = accuracy(adapted.model, dataset, Accelerator(), batch_size)
    console.print(f"{split} accuracy [bold]{acc:.2%}[/] on {len(dataset)} images of {splits.name}")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
@weights_option
def predict(checkpoint, images, top_k, weights) -> None:
    """Top-k classes (with names) for image files.

    \b
    Example:
      adapt predict runs/tune/adapter.safetensors photo1.jpg photo2.png --top-k 3
    """
    from adapt.adapted import AdaptedModel
    from adapt.evaluate import predict_files

    adapted, _ = AdaptedModel.from_checkpoint(checkpoint, weights)
    for prediction in predict_files(adapted, list(images), top_k):
        ranked = "  ".join(f"{escape(name)} {p:.1%}" for name, p in prediction.top)
        console.print(f"[bold]{escape(str(prediction.path))}[/]: {ranked}", highlight=False)


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


@cli.command()
@backbone_option
@click.option("--num-classes", type=click.IntRange(1), default=10, show_default=True)
@click.option("--image-size", type=click.IntRange(16), default=None, help="Default: the backbone's.")
def methods(backbone, num_classes, image_size) -> None:
    """The methods, their trainable parameters on a backbone, and whether they merge.

    \b
    Example:
      adapt methods --backbone vit_base_patch16_224 --num-classes 100
    """
    from adapt.methods import method_rows

    table = Table(title=f"methods on {backbone}, {num_classes} classes")
    for column in ("method", "trainable", "share", "mergeable", "default lr", "what it trains"):
        table.add_column(column, justify="right" if column in ("trainable", "share", "default lr") else "left")
    for row in method_rows(list(METHODS), backbone, num_classes, image_size):
        table.add_row(row.name, f"{row.trainable:,}", f"{row.trainable / row.total:.2%}", "yes" if row.mergeable else "no",
                      f"{row.default_lr:g}", row.summary)  # fmt: skip
    console.print(table)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
def info(checkpoint) -> None:
    """What an adapter checkpoint holds: method, backbone, classes, tensors, training.

    \b
    Example:
      adapt info runs/tune/adapter.safetensors
    """
    from adapt.checkpoint import read_checkpoint

    tensors, meta = read_checkpoint(checkpoint)
    table = Table(title=str(checkpoint), show_header=False)
    rows = {
        "method": f"{meta.method} {json.dumps(meta.method_options)}",
        "backbone": f"{meta.backbone} ({meta.backbone_weights})",
        "backbone sha256": meta.backbone_sha256,
        "classes": f"{len(meta.class_names)}: {', '.join(meta.class_names[:10])}{' …' if len(meta.class_names) > 10 else ''}",
        "image size": f"{meta.image_size}px, mean {meta.mean}, std {meta.std}",
        "tensors": f"{len(tensors)} tensors, {sum(t.numel() for t in tensors.values()):,} values",
        "training": json.dumps(meta.training),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


def main() -> None:
    cli(prog_name="adapt")


if __name__ == "__main__":
    main()
