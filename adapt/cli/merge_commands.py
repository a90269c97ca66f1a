"""Commands that fold or combine what was learned: merge, export, import-peft, soup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from adapt.cli.common import cli, console, plain_value, preset_layer, preset_overrides, typed_command, weights_option
from adapt.errors import AdaptError
from adapt.merging import RECIPES
from adapt.merging.options import DTYPES


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(), required=True,  # a str: a trailing / asks for a folder
              help="A .safetensors file, or a folder (ending in /, or with --format hub).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["auto", "file", "hub"]), default="auto", show_default=True,
              help="file: one state dict; hub: config.json + model.safetensors (timm local-dir:). "
                   "auto: hub when --out ends in / or is a folder.")  # fmt: skip
@click.option("--fold-bn", is_flag=True, help="Also fold BatchNorm into the conv before it (for deployment).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier merge at --out.")
@weights_option
def merge(checkpoint, out, fmt, fold_bn, overwrite, weights) -> None:
    """Fold an adapter into the backbone's weights: a plain timm model, no extra cost.

    Takes adapter checkpoints (adapt tune, soups of them) and continual task checkpoints
    (their incremental head becomes the timm classifier). A file loads with
    timm.create_model(NAME, num_classes=K).load_state_dict(...); a hub folder with
    timm.create_model("local-dir:DIR", pretrained=True), preprocessing included.
    Neither needs adapt.

    \b
    Examples:
      adapt merge runs/tune/adapter.safetensors --out merged.safetensors
      adapt merge runs/tune/adapter.safetensors --out merged/      # hub layout
    """
    from adapt.merging.reparam import merge_checkpoint

    result = merge_checkpoint(checkpoint, out, fmt, fold_bn, overwrite, weights, typed_command())
    report = result.report
    folded = f", {report.batchnorms_folded} BatchNorms folded into convs" if fold_bn else ""
    if result.was_plain:
        console.print(f"{checkpoint} is already a plain {result.backbone} (nothing to fold){folded}; "
                      f"wrote it as {result.layout} -> {result.out}")  # fmt: skip
    else:
        console.print(
            f"merged {report.method} into {result.backbone} in {report.seconds * 1000:.0f} ms, "
            f"peak extra memory {report.peak_extra_bytes / 2**20:.2f} MiB "
            f"(largest tensor {report.largest_tensor_bytes / 2**20:.2f} MiB){folded} -> {result.out}"
        )
    if report.note:
        console.print(f"note: {report.note}")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("old_out", required=False, type=click.Path(path_type=Path), metavar="")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="The folder to write.  [required]")
@click.option("--format", "fmt", type=click.Choice(["peft", "hub"]), default="peft", show_default=True,
              help="peft: adapter_config.json + adapter_model.safetensors, base model in OUT/base/; "
                   "hub: the merged model as config.json + model.safetensors (as adapt merge --out DIR/).")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out (only its files).")
@click.option("--force", is_flag=True, hidden=True)  # the old name of --overwrite
@weights_option
def export(checkpoint, old_out, out, fmt, overwrite, force, weights) -> None:
    """Write a checkpoint in another tool's layout: peft (LoRA) or a timm hub folder.

    --out must be new, empty, or hold an earlier export (then --overwrite); nothing else in
    it is touched.

    \b
    Examples:
      adapt export runs/lora/adapter.safetensors --format peft --out exported/
      # then, without adapt's code (import adapt first only where torchvision does not match torch):
      #   base = timm.create_model("local-dir:exported/base", pretrained=True)
      #   model = PeftModel.from_pretrained(base, "exported/")
      adapt export runs/ssf/adapter.safetensors --format hub --out merged/
    """
    if old_out is not None:
        if out is not None:
            raise AdaptError(f"give the folder once: --out {out} (the second argument {old_out} is its old form)")
        console.print("note: the folder as a second argument is the old form; use --out DIR")
        out = old_out
    if force:
        console.print("note: --force is now --overwrite")
    if out is None:
        raise click.MissingParameter(param_type="option", param_hint="'--out'")
    overwrite = overwrite or force
    if fmt == "hub":
        from adapt.merging.reparam import merge_checkpoint

        result = merge_checkpoint(checkpoint, str(out), "hub", False, overwrite, weights, typed_command())
        console.print(f"wrote hub folder {result.out} (timm.create_model('local-dir:{result.out}', pretrained=True))")
        return
    from adapt.peft_format import export_peft

    folder = export_peft(checkpoint, out, weights, overwrite, typed_command())
    console.print(f"wrote peft adapter folder {folder} (base model in {folder / 'base'})")


@cli.command("import-peft")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The adapter checkpoint to write.")
@click.option("--backbone", default=None, help="timm name, when the folder does not record it.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@weights_option
def import_peft(folder, out, backbone, overwrite, weights) -> None:
    """Read a peft LoRA folder into an adapt checkpoint (for eval, predict, merge).

    \b
    Example:
      adapt import-peft exported/ --out lora.safetensors
    """
    from adapt.peft_format import import_peft as read_folder

    meta = read_folder(folder, out, backbone, weights, overwrite)
    console.print(f"wrote {out}: lora rank {meta.method_options['rank']} on {meta.backbone}, {len(meta.class_names)} classes")


def _given(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options the user typed (not defaults), as plain values for SoupOptions."""
    return {name: plain_value(value) for name, value in values.items()
            if name not in ("config", "preset") and ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}  # fmt: skip


def _averaged_words(keys: list[str]) -> str:
    """'12 BatchNorm statistics, head.weight, head.bias': what a soup averaged instead of merging."""
    statistics = [k for k in keys if k.endswith(("running_mean", "running_var"))]
    others = [k for k in keys if k not in statistics]
    words = [f"{len(statistics)} BatchNorm statistics"] if statistics else []
    words += others[:3] + ([f"{len(others) - 3} more"] if len(others) > 3 else [])
    return ", ".join(words)


def _estimates_words(estimates: list[dict]) -> str:
    """'digits train, 256 examples, for each of 3' (or each ingredient's, in order, when they differ)."""
    words = [f"{e['data']} {e['split']}, {e['examples']} examples" for e in estimates]
    return f"{words[0]}, for each of {len(words)}" if len(set(words)) == 1 else "; ".join(words)


@cli.command()
@click.argument("ingredients", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output .safetensors (required here or in --config).")
@click.option("--recipe", type=click.Choice(list(RECIPES)), default="uniform", show_default=True)
@click.option("--coeffs", default=None, help="Ingredient coefficients for a weighted soup, e.g. 0.2,0.5,0.3.")
@click.option("--allow-negative", is_flag=True, help="Allow negative --coeffs (extrapolation; their sum must not be 0).")
@click.option("--base", default=None, metavar="FILE|embedded|TIMM_NAME[:WEIGHTS]",
              help="The model the state dicts were fine-tuned from (task-arithmetic, ties, dare): a file, a hub "
                   "folder, the embedded Lite0, or a timm model with weights (a file or 'random').")  # fmt: skip
@click.option("--scale", default=None, help="Task-vector scale lambda (default 1; wise-ft's alpha, slerp's t: 0.5), "
              "or 'auto': chosen on --data.")
@click.option("--scale-grid", default=None,
              help="The scales --scale auto tries, e.g. 0.5,1,1.5 (default: the recipe paper's grid: TIES 0.8..2.5, "
                   "task arithmetic 0.1..1.0, DARE 0.1,0.3,0.5,0.7,0.9,1).")  # fmt: skip
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=None, help="TIES: share kept (0.2).")
@click.option("--trim", type=click.Choice(["global", "per-tensor"]), default=None,
              help="TIES: trim over the whole task vector (paper, default) or per tensor.")  # fmt: skip
@click.option("--drop", default=None, metavar="P[,P...]",
              help="DARE: drop rate (0.5); several (0.1,0.3,0.5,0.7,0.9) are chosen on --data as MergeLM does: "
                   "lambda by task arithmetic first (with --scale auto), then each rate at it.")  # fmt: skip
@click.option("--seed", type=int, default=None, help="DARE's random drops (0).")
@click.option("--accept", type=click.Choice(["ge", "gt"]), default=None,
              help="Greedy: add an ingredient when the soup's accuracy is >= (paper, default) or > the best.")  # fmt: skip
@click.option("--data", multiple=True, metavar="SPEC",
              help="Held-out data for --recipe greedy and --scale auto, e.g. digits. Fisher: each ingredient's own "
                   "data, once for all or repeated once per ingredient in order.")  # fmt: skip
@click.option("--split", type=click.Choice(["val", "test", "train"]), default=None,
              help="Split of --data: val for held-out choices (default), train for fisher's estimates (default).")
@click.option("--examples", type=click.IntRange(1), default=None,
              help="Fisher: examples per ingredient (4096, model_merging's; each costs one backward pass per class).")
@click.option("--floor", type=float, default=None, help="Fisher: the first ingredient's Fisher floor (1e-6).")
@click.option("--normalize/--no-normalize", default=None,
              help="Fisher: divide each Fisher by its L2 norm first (default, model_merging's normalize_fishers).")
@click.option("--rank", type=click.IntRange(1), default=None, help="LoRA ingredients: a LoRA adapter of this rank (SVD).")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Output dtype (default: the inputs').")
@click.option("--max-shard-size", default=None, help="Split the output into shards, e.g. 2GB.")
@click.option("--backbone", default=None, help="timm name, for held-out data on state dicts that do not record it.")
@click.option("--preset", default=None, metavar="NAME", help="A paper's recipe (adapt presets): ties, dare, task-arithmetic; "
              "--config and flags win.")
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="YAML with any of these options (+ ingredients), or a mergekit configuration (models:, "
                   "merge_method:, base_model:, parameters:, dtype:) for linear, task_arithmetic, ties, dare_ties, "
                   "dare_linear, slerp and model_stock.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (never an ingredient or the base).")
@click.option("--weights", hidden=True, default=None)
@click.option("--greedy", hidden=True, is_flag=True, default=None)
@click.pass_context
def soup(ctx, **values) -> None:
    """Average or merge checkpoints of one model, streaming tensor by tensor.

    Ingredients are full state dicts (.safetensors, or .pth read with weights_only) or
    adapter checkpoints of one method and backbone. SSF, BitFit, linear and full adapters
    (and HST side networks) average as they are, into an adapter checkpoint. LoRA and SPT
    are folded into the backbone first: their soup is a merged model (or, with --rank,
    a LoRA adapter again, by SVD). Memory does not grow with the number of ingredients.

    \b
    Examples:
      adapt soup a.safetensors b.safetensors c.safetensors --out soup.safetensors
      adapt soup a b c --coeffs 0.2,0.5,0.3 --out soup.safetensors
      adapt soup a b c --recipe greedy --data digits --split val --out greedy.safetensors
      adapt soup ft1 ft2 --recipe ties --base pretrained.safetensors --scale auto --data digits --out ties.safetensors
      adapt soup m1.safetensors m2.safetensors --recipe task-arithmetic --base embedded --out ta.safetensors
      adapt soup lora1 lora2 lora3 --rank 8 --out lora-soup.safetensors
      adapt soup ft1 --recipe wise-ft --base pre.safetensors --scale auto --data digits --out wise.safetensors
      adapt soup ft1 ft2 --recipe model-stock --base pre.safetensors --out stock.safetensors
      adapt soup ft1 ft2 --recipe fisher --data digits --examples 256 --out fisher.safetensors
      adapt soup --config soup.yaml
      adapt soup --config mergekit.yaml --out merged.safetensors
    """
    from adapt.merging.adapter_soup import run_soup
    from adapt.merging.options import soup_options

    layer = preset_layer("soup", values["preset"])
    options, recipe = soup_options(_given(ctx, values), values["config"], layer[1] if layer else None)
    overridden = preset_overrides(ctx, values["config"], layer)
    if overridden:
        console.print(overridden)
    steps = Table(title="greedy soup")
    for column in ("ingredient", "own accuracy", "soup accuracy", "added"):
        steps.add_column(column)
    summary = run_soup(options, recipe, on_step=lambda step: steps.add_row(
        step.ingredient, f"{step.own_accuracy:.2%}", f"{step.soup_accuracy:.2%}", "yes" if step.added else "no"))  # fmt: skip
    if summary.greedy_steps:
        console.print(steps)
    for name, table, chosen in (("scale", summary.scale_table, summary.scale), ("drop rate", summary.drop_table, summary.drop)):
        if table:
            shown = Table(title=f"{summary.recipe}: held-out accuracy by {name}"
                          + (" (task arithmetic, no drop: MergeLM's lambda)" if name == "scale" and summary.drop_table else ""))
            shown.add_column(name, justify="right")
            shown.add_column("accuracy", justify="right")
            for value, acc in table:
                shown.add_row(f"{value:g}" + (" (chosen)" if value == chosen else ""), f"{acc:.2%}")
            console.print(shown)
    if summary.svd_errors:
        console.print(f"LoRA re-compression to rank {options.rank}: relative Frobenius error "
                      f"{summary.svd_errors['overall']:.2e} overall, at most "
                      f"{max(v for k, v in summary.svd_errors.items() if k != 'overall'):.2e} per layer")  # fmt: skip
    rows = [
        ("ingredients", f"{len(summary.ingredients)} {summary.kind}"),
        ("recipe", summary.recipe + (f", scale {summary.scale:g}" if summary.scale is not None else "")
         + (f", drop {summary.drop:g}" if summary.drop is not None else "")),
        *([("averaged, not merged", _averaged_words(summary.averaged))] if summary.averaged else []),
        *([("Fisher estimated on", _estimates_words(summary.estimates))] if summary.estimates else []),
        ("tensors", f"{summary.tensors:,}"),
        ("written", f"{summary.bytes_written / 2**20:.1f} MiB"),
        ("time", f"{summary.seconds:.2f} s"),
        ("process memory (anonymous, at the end)" if summary.greedy_steps or summary.svd_errors
         else "process memory (anonymous, peak)", f"{summary.peak_anon_bytes / 2**20:.0f} MiB"),
        ("output", ", ".join(summary.outputs)),
    ]
    summary_table = Table(show_header=False, title="soup")
    for label, value in rows:
        summary_table.add_row(label, value)
    console.print(summary_table)
