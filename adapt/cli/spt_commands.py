"""SPT's two steps as commands: sensitivity scores, then the allocation of a budget."""

from __future__ import annotations

from pathlib import Path

import click

from adapt.cli.common import RequiredOption, backbone_option, cli, config_option, console, weights_option


@cli.command()
@click.option("--data", default="digits", show_default=True, help="digits | folder:PATH | vtab:ROOT/TASK")
@backbone_option
@weights_option
@click.option("--image-size", type=click.IntRange(16, 1024), default=None, help="Default: 96 for digits, else the backbone's.")
@click.option("--batches", type=click.IntRange(1), default=16, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--sample", type=click.Choice(["first", "random"]), default="first", show_default=True,
              help="first: the first batches x batch-size training images in order (the official pass); "
                   "random: a seeded draw with replacement. Both unaugmented.")  # fmt: skip
@click.option("--drop-path", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Stochastic depth on a ViT's blocks during the pass, as SPT's official runs (0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images per split (quick checks).")
@click.option("--out", type=click.Path(path_type=Path), cls=RequiredOption, help="The scores .safetensors to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@config_option
def sensitivity(data, backbone, weights, image_size, batches, batch_size, sample, drop_path, seed, limit, out,
                overwrite) -> None:  # fmt: skip
    """Score every backbone weight by its accumulated squared gradient (SPT, step 1).

    \b
    Example:
      adapt sensitivity --data digits --batches 16 --batch-size 32 --out sensitivity.safetensors
      adapt allocate sensitivity.safetensors --budget 0.4M --out alloc.json --plot alloc.png
    """
    from adapt.methods.spt.sensitivity import save_sensitivity, task_sensitivity

    scores, metadata = task_sensitivity(data, backbone, weights, image_size, batches, batch_size, seed, sample, drop_path,
                                        limit)  # fmt: skip
    save_sensitivity(out, scores, metadata, overwrite)
    console.print(f"scored {sum(t.numel() for t in scores.values()):,} weights in {len(scores)} tensors "
                  f"over {batches} batches of {batch_size} -> {out}")  # fmt: skip


@cli.command()
@click.argument("scores", type=click.Path(path_type=Path))
@click.option("--budget", required=True, help="Trainable parameters: 400000, 0.4M, 50k or 1% (of the backbone).")
@click.option("--structured", type=click.Choice(["lora", "adapter"]), default="lora", show_default=True,
              help="The module for sensitive matrices; adapters are non-linear and cannot be merged.")
@click.option("--adapter-form", type=click.Choice(["sequential", "parallel"]), default="sequential", show_default=True,
              help="Adapters on each layer's output (the official BlockSPTSeq) or on its input; sets their cost.")
@click.option("--rank", type=click.IntRange(1), default=8, show_default=True)
@click.option("--alpha-threshold", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True)
@click.option("--rule", type=click.Choice(["exact", "official"]), default="exact", show_default=True,
              help="exact: the count lands on the budget; official: the released code's closest point on a 0.02M grid.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The allocation JSON to write.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Also draw the allocation heatmap (PNG).")
@click.option("--overwrite", is_flag=True, help="Replace --out (and --plot) if they exist.")
def allocate(scores, budget, structured, adapter_form, rank, alpha_threshold, rule, out, plot, overwrite) -> None:
    """Spend a parameter budget where the task is sensitive (SPT, step 2).

    \b
    Example:
      adapt allocate sensitivity.safetensors --budget 0.4M --rank 8 --out alloc.json --plot alloc.png
      adapt tune --method spt --allocation alloc.json
    """
    from adapt.methods.spt.sensitivity import allocate_file

    allocation = allocate_file(scores, budget, out, rank, alpha_threshold, structured, plot, overwrite, rule, adapter_form)
    sparse = sum(len(i) for i in allocation.unstructured.values())
    console.print(
        f"{allocation.trainable_params():,} of {allocation.budget:,} budget: {structured} rank {rank} on "
        f"{len(allocation.structured)} matrices, sparse deltas of {sparse:,} entries in "
        f"{len(allocation.unstructured)} tensors, {len(allocation.vectors)} whole vectors -> {out}"
    )
