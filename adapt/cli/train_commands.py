"""Commands around training: tune, eval, predict, methods, info."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from adapt.cli.common import (RequiredOption, backbone_option, cli, config_option, console, described, fail,
                               log_with_option, method_flag_options, parse_options, precision_option, resolved_record,
                               resume_command, shown_path, weights_option, workers_option)  # fmt: skip
from adapt.methods import METHOD_FLAGS, METHODS, method_options
from adapt.train_config import HEAD_INITS, INTERPOLATIONS, LR_STEPPING, NORMALIZATIONS, TRAIN_CROPS, TrainConfig


@cli.command()
@click.option("--method", type=click.Choice(list(METHODS)), default="ssf", show_default=True)
@method_flag_options
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE", help="Any method option, e.g. init_std=0.01.")
@click.option("--data", default="digits", show_default=True, help="digits | folder:PATH | vtab:ROOT[/TASK]")
@click.option("--split-protocol", type=click.Choice(["final", "tune"]), default="final", show_default=True,
              help="VTAB: final = train800val200/test, tune = train800/val200.")  # fmt: skip
@click.option("--augment", default=None, metavar="on|off|POLICY",
              help="Training augmentation (timm: random-resized crop + flip; POLICY adds e.g. rand-m9-mstd0.5). "
                   "Default: on for folder:, off for vtab: (the VTAB-1k protocol) and digits.")  # fmt: skip
@backbone_option
@weights_option
@click.option("--init-from", type=click.Path(dir_okay=False), default=None, metavar="CKPT",
              help="Start from a trained checkpoint's head (and its adapter, if the same method): LP-FT, soup ingredients.")
@click.option("--head-init", type=click.Choice(HEAD_INITS), default=HEAD_INITS[0], show_default=True,
              help="How a fresh head starts: trunc-normal (std 0.02, bias 0: SSF's and SPT's code), timm (the "
                   "model's own), zeros.")  # fmt: skip
@click.option("--image-size", type=click.IntRange(16, 1024), default=None, help="Default: 96 for digits, else the backbone's.")
@click.option("--epochs", type=click.IntRange(1), default=TrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=TrainConfig.batch_size, show_default=True,
              help="The global batch: on N processes each takes batch-size / N, and the run gives the weights one "
                   "process would.")  # fmt: skip
@click.option("--drop-last", is_flag=True, help="Drop each epoch's last partial batch (timm's loader: SSF, HST).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="Default: the method's (adapt methods).")
@click.option("--weight-decay", type=click.FloatRange(0), default=None,
              help="On weight matrices only (head, LoRA, full layers). Default: the method's (adapt methods).")
@click.option("--warmup", type=click.FloatRange(0, 1), default=TrainConfig.warmup, show_default=True,
              help="Warmup share of the schedule's steps over --epochs (updates, or epochs with per-epoch stepping).")
@click.option("--lr-stepping", type=click.Choice(LR_STEPPING), default=TrainConfig.lr_stepping, show_default=True,
              help="How timm's cosine schedule steps: epoch = once per epoch, as timm's train.py (SSF, HST); "
                   "epoch-lagged = once per epoch, one epoch behind (SPT, NOAH, V-PETL); step = each optimizer update.")
@click.option("--warmup-lr", type=click.FloatRange(0), default=TrainConfig.warmup_lr, show_default=True,
              help="Where the warmup starts.")
@click.option("--min-lr", type=click.FloatRange(0), default=TrainConfig.min_lr, show_default=True,
              help="Where the cosine ends.")
@click.option("--cooldown-epochs", type=click.IntRange(0), default=TrainConfig.cooldown_epochs, show_default=True,
              help="Epochs at --min-lr after --epochs, as timm's scheduler runs them (SSF, HST: 10).")
@click.option("--eval-every", type=click.IntRange(1), default=None, metavar="N",
              help="Also test every N epochs (and at the last) and report the best of these as a second figure, "
                   "as SPT and NOAH do (test-selected; the final epoch's stays the headline).")  # fmt: skip
@click.option("--eval-from", type=click.IntRange(1), default=None, metavar="E",
              help="The first epoch --eval-every tests (default: N), then every N.")
@click.option("--eval-last", type=click.IntRange(0), default=0, show_default=True, metavar="K",
              help="With --eval-every, also test each of the last K epochs (SPT: 10).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--normalize", type=click.Choice(["backbone", *NORMALIZATIONS]), default="backbone", show_default=True,
              help="Input mean/std: the backbone cfg's, ImageNet's (SPT, NOAH, V-PETL with the original ViT-B_16.npz) "
                   "or 0.5 (inception: SSF, HST).")  # fmt: skip
@click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=INTERPOLATIONS[0], show_default=True,
              help="Of the resize to --image-size (V-PETL Bench's test images: bilinear); kept in the checkpoint.")
@click.option("--train-crop", type=click.Choice(TRAIN_CROPS), default=TRAIN_CROPS[0], show_default=True,
              help="With --augment: timm's random-resized crop, or a plain bicubic resize (V-PETL Bench's RandAugment).")
@click.option("--drop-path", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Stochastic depth on the frozen backbone's blocks while training (timm's drop_path_rate).")
@click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True)
@click.option("--grad-checkpointing", is_flag=True,
              help="Keep only each backbone block's input and run the block again in backward (timm's gradient "
                   "checkpointing): less training memory, slower steps, the same gradients.")  # fmt: skip
@precision_option
@click.option("--seed", type=int, default=0, show_default=True)
@workers_option
@log_with_option
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images per split (quick checks).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/tune"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (only its files).")
@click.option("--preset", default=None, metavar="NAME",
              help="A paper's recipe (adapt presets): its values, per VTAB-1k task where the paper's differ; "
                   "--config and flags win.")  # fmt: skip
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML with any of these options (long names); flags on the command line win.")  # fmt: skip
@click.pass_context
def tune(ctx, **_) -> None:
    """Train a method on a frozen backbone; write OUT/adapter.safetensors and metrics.

    The resolved options are kept in OUT/config.yaml; --resume takes them from there, so
    only --out is needed (a flag that would change the results is refused).

    The time goes into the epochs (each prints its images/s): fewer --epochs, a smaller
    --image-size or --limit N (at most N images per split) make a quick look; on image
    folders and VTAB, --workers decode images beside training.

    \b
    Examples:
      adapt tune                                   # SSF, embedded Lite0, digits
      adapt tune --method bitfit --data folder:pets --out runs/pets
      adapt tune --config run.yaml --lr 1e-3       # options from a file, one changed
      adapt tune --out runs/pets --resume          # continue with the saved options
      adapt tune --log-with tensorboard            # then: tensorboard --logdir runs/tune/tensorboard
      adapt tune --method spt --budget 0.4M --rank 8    # sensitivity, allocation, then training
      adapt tune --method linear --out lp && adapt tune --init-from lp/adapter.safetensors   # LP-FT
      adapt tune --method full --grad-checkpointing  # less training memory, same gradients, slower steps
      adapt tune --method lora --rank 4 --alpha 8 --targets 'qkv$' --backbone vit_small_patch16_224 --weights random
      adapt tune --backbone local-dir:merged/ --data folder:pets --out runs/pets-2   # a hub folder as the backbone
      adapt tune --data vtab:~/vtab-1k/dtd --backbone vit_base_patch16_224 --weights vit.safetensors
      adapt tune --data vtab:~/vtab-1k            # every task found, then the VTAB table
      adapt tune --preset ssf-vtab --data vtab:~/vtab-1k --weights vit_b16_augreg_in21k.safetensors   # SSF's recipe
      adapt tune --out runs/tune --overwrite       # replace the run already in runs/tune
      torchrun --nproc_per_node 2 -m adapt tune    # 2 processes, 16 images each of the global batch of 32
      adapt tune --preset spt-lora-vtab --data vtab:~/vtab-1k --weights ViT-B_16.npz   # SPT's five-budget sweep
    """
    from adapt.cli.common import preset_layer, preset_overrides, resolve_config
    from adapt.data import expand_spec
    from adapt.data.vtab import save_vtab_table
    from adapt.outputs import check_run_folder
    from adapt.presets import PRESETS
    from adapt.train import RUN_FILES
    from adapt.train_config import CONFIG_FILE

    config_file = ctx.params["config"]
    v = resolve_config(ctx, config_file)
    if v["resume"]:
        saved = [Path(v["out"]) / CONFIG_FILE, *sorted(Path(v["out"]).glob(f"*/{CONFIG_FILE}"))]
        found = next((p for p in saved if p.is_file()), None)
        if found is not None:
            v = resolve_config(ctx, config_file, str(found))
    v = resolve_config(ctx, config_file, preset=preset_layer("tune", v["preset"])) if v["preset"] is not None and not v["resume"] else v
    out, resume, overwrite = Path(v["out"]), v["resume"], v["overwrite"]
    resume_command(f"adapt tune --out {shlex.quote(str(out))} --resume")
    weights_note = PRESETS[v["preset"]].weights_note(v["weights"]) if v["preset"] is not None and not resume else None
    if weights_note:
        console.print(f"note: {weights_note}")
    specs = expand_spec(v["data"])  # several when data is a VTAB root holding many tasks
    task_outs = {spec: out / Path(spec.partition(":")[2]).name if len(specs) > 1 else out for spec in specs}
    for task_out in task_outs.values():  # before any training: every task folder must be free
        check_run_folder(task_out, RUN_FILES, resume, overwrite, remove=False)
    accuracies, best_periodic = {}, {}
    for spec, task_out in task_outs.items():
        task = Path(spec.partition(":")[2]).name if spec.startswith("vtab:") else None
        saved = task_out / CONFIG_FILE if resume and (task_out / CONFIG_FILE).is_file() else None
        layer = preset_layer("tune", v["preset"], task)
        tv = resolve_config(ctx, config_file, str(saved) if saved else None, None if saved else layer)
        if layer is not None and saved is None:
            missing = PRESETS[layer[0]].missing_task_note(task)
            if missing:
                console.print(f"note: {missing}")
            where = f" ({task})" if task in PRESETS[layer[0]].per_task else ""
            console.print(preset_overrides(ctx, config_file, layer, where)
                          or f"preset {layer[0]}{where}: every value the preset sets is used (adapt presets show {layer[0]})")  # fmt: skip
        accuracies[task_out.name], best = _swept_task(tv, spec, task_out)
        if best is not None:
            best_periodic[task_out.name] = best
    if len(specs) > 1:
        paper = PRESETS[v["preset"]].paper if v["preset"] else None
        _print_vtab(accuracies, best_periodic or None, paper)
        written = save_vtab_table(out, accuracies, paper, best_periodic or None)
        console.print(f"wrote {written[0]} and {written[1]}")


def _swept_task(v: dict, spec: str, out: Path) -> tuple[float, float | None]:
    """One task; a method flag that sweeps (Flag.sweep) and holds several values runs once per value into
    OUT/NAME-VALUE/ and keeps the best test accuracy (SPT's budget sweep). Returns (the task's test accuracy,
    the best over periodic evaluations or None)."""
    from adapt.tuning import SWEEP_FILE, keep_best

    swept = next(((name, [value.strip() for value in str(v[name]).split(",")]) for name, flag in METHOD_FLAGS.items()
                  if flag.sweep and v.get(name) is not None and "," in str(v[name])), None)  # fmt: skip
    if swept is None:
        return _reported_task(v, spec, out)
    name, values = swept
    options = _method_options({**v, name: None})
    METHODS[v["method"]].check_sweep(name, values, options)  # every value, before hours go into the first
    with METHODS[v["method"]].sweeping():  # e.g. SPT: one sensitivity pass for every budget of the task
        if not v["resume"]:
            for value in values:  # what only the model and data can refuse (a budget over its parameters), too
                _prepared({**v, name: value}, spec)
        results = {value: _reported_task({**v, name: value}, spec, out / f"{name}-{value}") for value in values}
    best = {value: r[1] for value, r in results.items() if r[1] is not None}
    chosen = keep_best(out, name, {value: r[0] for value, r in results.items()}, best or None)
    by = "best evaluation" if len(best) == len(results) else "final epoch"
    console.print(f"{name} sweep (final epoch / best evaluation): "
                  + ", ".join(f"{k} {r[0]:.2%}" + (f" / {r[1]:.2%}" if r[1] is not None else "") for k, r in results.items())
                  + f"  ->  {chosen} (by its {by}, chosen on test, as SPT's runs do)  ·  {out / SWEEP_FILE}")  # fmt: skip
    return results[chosen]


def _reported_task(v: dict, spec: str, out: Path) -> tuple[float, float | None]:
    """One run of `adapt tune`, with its result lines; (test accuracy, best over periodic evaluations)."""
    result = _tune_task(v, spec, out, on_note=lambda text: console.print(f"note: {text}"))
    share = result.trainable_params / result.total_params
    console.print(
        f"{result.test_split} accuracy {result.test_acc:.2%}  ·  trained "
        f"{result.trainable_params:,} of {result.total_params:,} parameters ({share:.2%})  ·  {out}",
        style="bold green",
    )
    best = result.best_periodic()
    if best is not None:
        console.print(f"best {result.test_split} accuracy over the evaluations every {v['eval_every']} epochs: "
                      f"{best[0]:.2%} (epoch {best[1]}; chosen on test, as the papers report it)")  # fmt: skip
    return result.test_acc, best[0] if best is not None else None


def _method_options(v: dict) -> dict:
    """The method options a command's resolved values give: the method flags and --option pairs."""
    return method_options({name: v[name] for name in METHOD_FLAGS}, parse_options(v["method_options"]))


def _prepared(v: dict, spec: str) -> None:
    """Build one run's model and data (the method set up from them), train nothing: a sweep's check."""
    from adapt.tuning import prepare

    job, config = _job_and_config(v)
    prepare(job, spec, config)


def _tune_task(v: dict, spec: str, out: Path, on_note):
    """One task of `adapt tune` from its resolved options `v`."""
    from adapt.cli.common import config_record
    from adapt.tuning import tune as run_tune

    job, config = _job_and_config(v)
    return run_tune(job, config, out, v["resume"], spec, on_start=_print_start, on_epoch_end=_print_epoch,
                    overwrite=v["overwrite"], record=config_record(v), on_note=on_note)  # fmt: skip


def _job_and_config(v: dict):
    """The TuneJob and TrainConfig of resolved options `v`."""
    from adapt.tuning import TuneJob

    options = _method_options(v)
    job = TuneJob(data=v["data"], method=v["method"], options=options, backbone=v["backbone"], weights=v["weights"],
                  image_size=v["image_size"], split_protocol=v["split_protocol"], limit=v["limit"], augment=v["augment"],
                  init_from=v["init_from"], head_init=v["head_init"], drop_path=v["drop_path"],
                  normalize=v["normalize"], interpolation=v["interpolation"], train_crop=v["train_crop"])  # fmt: skip
    config = TrainConfig(epochs=v["epochs"], batch_size=v["batch_size"], lr=v["lr"], weight_decay=v["weight_decay"],
                         drop_last=v["drop_last"], lr_stepping=v["lr_stepping"], eval_from=v["eval_from"],
                         eval_last=v["eval_last"],
                         warmup=v["warmup"], cooldown_epochs=v["cooldown_epochs"], warmup_lr=v["warmup_lr"],
                         min_lr=v["min_lr"], grad_accum=v["grad_accum"], grad_checkpointing=v["grad_checkpointing"],
                         precision=v["precision"], seed=v["seed"], workers=v["workers"], log_with=v["log_with"],
                         eval_every=v["eval_every"], label_smoothing=v["label_smoothing"])  # fmt: skip
    return job, config


def _print_start(adapted, data) -> None:
    trainable, total = adapted.parameter_counts()
    val = f"{len(data.held_out_val)} val / " if data.held_out_val is not None else ""
    scored = "" if data.held_out_val is not None else f" (no held-out val split: each epoch is scored on {data.test_name})"
    console.print(
        f"{adapted.method.name} on {adapted.backbone.name} ({shown_path(adapted.backbone.weights)} weights), "
        f"data {data.name}: {len(data.train)} train / {val}{len(data.test)} {data.test_name} images{scored}, "
        f"{data.num_classes} classes, {adapted.image_size}px; training {trainable:,} of {total:,} parameters"
    )
    for note in (*adapted.backbone.notes, *([data.note] if data.note else []), *adapted.method.notes):
        console.print(f"note: {note}")
    if adapted.method.report():
        console.print(adapted.method.report())


def _print_epoch(result) -> None:
    console.print(
        f"epoch {result.epoch}: loss {result.train_loss:.4f}  train acc {result.train_acc:.2%}  "
        f"{result.eval_split} acc {result.eval_acc:.2%}  {result.images_per_s:.0f} img/s  {result.seconds:.0f}s"
    )


def _print_vtab(accuracies: dict[str, float], best: dict[str, float] | None, paper=None) -> None:
    """The VTAB-1k table: the final epoch's accuracies and, where the runs tested periodically, the best over
    those evaluations, each column labelled; a preset's published figures beside the column they compare with."""
    from adapt.data.vtab import COLUMN_TITLES, FINAL, VTAB_GROUPS, paper_column, vtab_columns

    columns = vtab_columns(accuracies, best)
    beside = paper_column(columns)
    table = Table(title="VTAB-1k" + (f" beside the paper ({paper.source})" if paper else ""))
    table.add_column("task")
    for name in columns:
        table.add_column(COLUMN_TITLES[name], justify="right")
    if paper:
        table.add_column(f"paper (beside {COLUMN_TITLES[beside]})", justify="right")
    complete = len(accuracies) == 19

    def row(label, key: str, mean: bool, theirs: float | None) -> None:
        values = [column[key] if mean else column["tasks"][key] for column in columns.values()]
        cells = [f"{v:.2%}" if v is not None else "n/a (a group is empty)" for v in values]
        table.add_row(label, *cells, *([f"{theirs:.2f}%" if theirs is not None else "-"] if paper else []))

    for task in accuracies:
        row(task, task, False, paper.tasks.get(task) if paper else None)
    for group in VTAB_GROUPS:
        if columns[FINAL][group] is not None:
            row(Text(f"{group} mean", style="italic"), group, True, None)
    row(Text(f"plain mean of {len(accuracies)} tasks", style="bold"), "plain_mean", True,
        paper.plain_mean if paper and complete else None)  # fmt: skip
    row(Text("mean of the 3 group means", style="bold"), "group_mean", True, paper.group_mean if paper and complete else None)
    console.print(table)


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Default: the data the checkpoint was trained on.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--split-protocol", type=click.Choice(["final", "tune"]), default="final", show_default=True)
@weights_option
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the result as JSON. Default: NAME.eval.json beside the checkpoint (one entry per "
                   "data, split and limit), unless that is the working folder.")  # fmt: skip
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Also draw the confusion matrix (PNG).")
@click.option("--overwrite", is_flag=True, help="Replace --out and --plot if they exist.")
def evaluate(checkpoint, data, split, split_protocol, weights, batch_size, limit, out, plot, overwrite) -> None:
    """Top-1, top-5, loss and per-class accuracy of a checkpoint on a split: adapter, continual task,
    merged or soup; a file, a hub folder (adapt merge --out DIR/) or a run folder.

    \b
    Example:
      adapt eval runs/tune/adapter.safetensors --split test
      adapt eval merged/ --plot confusion.png      # merged models record their data too
    """
    from adapt.evaluation import evaluate_checkpoint, save_eval

    result = evaluate_checkpoint(checkpoint, data, split, split_protocol, weights, batch_size, limit, plot, overwrite)
    top5 = f", top-5 {result.top5:.2%}" if result.top5 is not None else ""
    console.print(f"{split} accuracy {result.accuracy:.2%}{top5}, loss {result.loss:.4f} on {result.images} images "
                  f"of {result.data} ({result.classes} classes)")  # fmt: skip
    if result.note:
        console.print(f"note: {result.note}")
    scored = {name: acc for name, acc in result.per_class.items() if acc is not None}
    if len(scored) > 1:
        worst = sorted(scored.items(), key=lambda item: item[1])[:3]
        console.print("lowest per-class accuracy: " + ", ".join(f"{name} {acc:.1%}" for name, acc in worst))
    written = save_eval(result, checkpoint, out, overwrite)
    for path in (written, plot):
        if path is not None:
            console.print(f"wrote {path}")
    if written is None:
        console.print("results printed only: a checkpoint in the working folder (or a read-only one) gets no "
                      "NAME.eval.json beside it; --out FILE writes them")  # fmt: skip


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the predictions to this file.")
@click.option("--format", "format_", type=click.Choice(["csv", "json"]), default=None,
              help="Of --out. Default: from its suffix, else csv.")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@weights_option
def predict(checkpoint, images, top_k, batch_size, out, format_, overwrite, weights) -> None:
    """Top-k classes (with names) for image files, folders (every image in them) and globs.

    An unreadable image is reported on stderr and skipped; the others are still predicted, and
    the exit status is then 1.

    \b
    Example:
      adapt predict runs/tune/adapter.safetensors photo1.jpg photo2.png --top-k 3
      adapt predict merged/ photos/ 'more/*.jpg' --out predictions.csv
    """
    from adapt.cli.common import errors
    from adapt.evaluation import predict_checkpoint

    if format_ is None:
        format_ = "json" if out is not None and out.suffix.lower() == ".json" else "csv"
    run = predict_checkpoint(checkpoint, list(images), top_k, weights, batch_size, out, format_, overwrite)
    for prediction in run.predictions:
        ranked = "  ".join(f"{name} {p:.1%}" for name, p in prediction.top)
        console.print(f"{prediction.path}: {ranked}")
    if out is not None:
        console.print(f"wrote {out} ({len(run.predictions)} images, {format_})")
    for _, reason in run.skipped:
        errors.print(f"skipped: {reason}")
    if run.skipped:
        fail(f"{len(run.skipped)} of {len(run.skipped) + len(run.predictions)} images could not be read (listed above)")


@cli.command()
@backbone_option
@click.option("--num-classes", type=click.IntRange(1), default=10, show_default=True)
@click.option("--image-size", type=click.IntRange(16, 1024), default=None, help="Default: the backbone's.")
def methods(backbone, num_classes, image_size) -> None:
    """The methods, their trainable parameters on a backbone, and whether they merge.

    The default backbone's table (10 classes) ships with adapt; others are built once and kept
    in the user's cache folder (ADAPT_CACHE_DIR, else ~/.cache/adapt) for the next call with
    the same backbone, classes, image size and installed versions.

    \b
    Example:
      adapt methods --backbone vit_base_patch16_224 --num-classes 100
    """
    from adapt.methods.rows_cache import cached_method_rows

    table = Table(title=f"methods on {backbone}, {num_classes} classes")
    for column in ("method", "trainable", "share", "merges", "lr", "wd"):
        table.add_column(column, justify="left" if column in ("method", "merges") else "right", no_wrap=True)

    def building() -> None:
        console.print(f"counting each method's parameters on {backbone} (once: the table is kept for the next call)…")

    rows = cached_method_rows(list(METHODS), backbone, num_classes, image_size, on_build=building)
    for row in rows:
        trainable = f"budget + {row.trainable:,}" if row.budgeted else f"{row.trainable:,}"
        share = "--budget" if row.budgeted else f"{row.trainable / row.total:.2%}" if row.total else "n/a"
        trainable = "-" if row.unavailable else trainable
        table.add_row(row.name, trainable, share, "yes" if row.mergeable else "no", f"{row.default_lr:g}",
                      f"{row.default_weight_decay:g}")  # fmt: skip
    console.print(table)
    summaries = {row.name: row.summary + (f"; defaults: {row.defaults}" if row.defaults not in ("", "-") else "")
                 + (f"; not on {backbone}: {row.unavailable}" if row.unavailable else "") for row in rows}  # fmt: skip
    console.print(described(summaries, "What each trains:"), soft_wrap=False)
    console.print(Text("lr, wd (weight decay, on weight matrices only): each method's defaults, not a paper's "
                       "(adapt presets has the papers'); adapt tune --help lists every option."), soft_wrap=False)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
def info(path, as_json) -> None:
    """What a file or folder adapt wrote is and holds: adapter, merged model, soup (recipe, ingredients,
    held-out scores), hub, run or peft folder, sensitivity scores, allocation, perceptual-init backbone,
    training state, run summary, evaluation or continual results.

    \b
    Example:
      adapt info runs/tune/adapter.safetensors
      adapt info soup.safetensors --json
    """
    from adapt.describe import describe

    description = describe(path)
    if as_json:
        console.print(json.dumps(description.to_dict(), indent=2), soft_wrap=True)
        return
    console.print(f"{description.path}: {description.kind}", style="bold")
    for key, value in description.fields.items():
        if key in ("values", "index entries"):
            continue  # said in the tensors line
        for label, text in _info_lines(key, value):
            console.print(f"  {label:<22} {text}")


def _info_lines(key: str, value) -> list[tuple[str, str]]:
    """A field as readable lines: mappings one line per entry (nested keys joined by '.'), long lists shortened."""
    if isinstance(value, dict) and value:
        return [line for k, v in value.items() for line in _info_lines(f"{key}.{k}", v)]
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return [line for i, v in enumerate(value) for line in _info_lines(f"{key}[{i}]", v)]
        shown = ", ".join(str(v) for v in value[:10])
        return [(key, f"{len(value)}: {shown}{' …' if len(value) > 10 else ''}")]
    return [(key, f"{value:.4g}" if isinstance(value, float) else str(value))]


@cli.command("perceptual-init")
@click.option("--data", cls=RequiredOption, help="nights:ROOT (NIGHTS layout) or triplets:CSV (ref,a,b,choice).")
@backbone_option
@click.option("--from", "source", default="random", show_default=True, metavar="random|pretrained|embedded|PATH",
              help="Where the backbone starts: random (the paper's perceptual initialization), or pretrained "
                   "weights (perceptual fine-tuning, as DreamSim): the backbone's own (pretrained: embedded for "
                   "Lite0, a hub folder's), embedded, or a file/hub folder.")  # fmt: skip
@click.option("--method", type=click.Choice(list(METHODS)), default="full", show_default=True, help="What trains.")
@method_flag_options
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE", help="Any method option, e.g. init_std=0.01.")
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "adamw"]), default="adam", show_default=True,
              help="adam with betas (0.5, 0.999), DreamSim's; adamw decouples the weight decay.")
@click.option("--margin", type=click.FloatRange(0, 2), default=0.05, show_default=True, help="The hinge loss's margin.")
@click.option("--patience", type=click.IntRange(1), default=None,
              help="Stop after this many epochs without a better val 2AFC (default: run every epoch; the best is kept).")
@click.option("--norm-statistics", type=click.Choice(["frozen", "batch"]), default="frozen", show_default=True,
              help="BatchNorm running statistics while aligning: frozen keeps the start's (the network scored "
                   "before is the one trained); batch normalizes by batch statistics and updates them.")  # fmt: skip
@click.option("--image-size", type=click.IntRange(16, 1024), default=None, help="Default: the backbone's.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", cls=RequiredOption, type=click.Path(path_type=Path), help="The backbone .safetensors to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--preset", default=None, metavar="NAME", help="A paper's recipe (adapt presets): dreamsim-nights; "
              "--config and flags win.")
@config_option
def perceptual_init(**v) -> None:
    """Align a backbone with human similarity triplets before any other training.

    As in the paper, it starts from a random initialisation by default; the pipeline is
    random init -> this command -> adapt tune --method full --weights OUT. With --from
    embedded or a weights file it is perceptual fine-tuning of a pretrained backbone instead.
    Trains by DreamSim's recipe (Adam, betas 0.5/0.999, lr 3e-4, no weight decay, batch 32,
    8 epochs, margin 0.05; BatchNorm statistics frozen) and writes the epoch with the best val 2AFC, as a plain backbone
    state dict that adapt tune --weights takes (its metadata keeps the options, as `config`).
    The method takes its options as in adapt tune (--rank, --alpha, --option KEY=VALUE, ...);
    --preset dreamsim-nights is DreamSim's whole run (LoRA r 16, alpha 32, dropout 0.2 on qkv of
    a pretrained ViT-B/16; give its DINO weights with --from FILE).
    Prints the 2AFC score (DreamSim's: the share of voters who agree with the model's pick)
    and the majority accuracy, per split (NIGHTS test as test_imagenet and test_no_imagenet,
    and both together as nights_total), before and after.

    \b
    Examples:
      adapt perceptual-init --data nights:~/nights --out init.safetensors
      adapt tune --method full --weights init.safetensors --lr 1e-3
      adapt perceptual-init --data triplets:judgements.csv --from embedded --method ssf --out tuned.safetensors
      adapt perceptual-init --preset dreamsim-nights --data nights:~/nights --from dino_vitb16.safetensors --out d.safetensors
    """
    from adapt.perceptual import perceptual_init as run_init
    from adapt.presets import PRESETS

    recipe = {key: v[key] for key in ("epochs", "lr", "weight_decay", "batch_size", "optimizer", "margin", "patience",
                                      "norm_statistics", "seed")}  # fmt: skip
    options = _method_options(v)
    source, method, out = v["source"], v["method"], v["out"]
    preset = resolved_record().get("preset")
    weights_note = PRESETS[preset].weights_note(source, "from") if preset else None
    if weights_note:
        console.print(f"note: {weights_note}")
    result = run_init(v["data"], out, v["backbone"], source, method, recipe, v["image_size"], v["overwrite"],
                      record=resolved_record(), on_epoch=console.print, method_options=options)  # fmt: skip
    kind = "perceptual initialization (random start)" if source == "random" else "perceptual fine-tuning"
    table = Table(title=f"2AFC on the human votes, before → after: {kind}, {method}, {result.trainable_params:,} trained parameters")
    for column in ("split", "triplets", "2AFC (DreamSim)", "majority accuracy"):
        table.add_column(column, justify="left" if column == "split" else "right", no_wrap=True)
    for split, before in result.before.items():
        after = result.after[split]
        table.add_row(split, str(before.triplets), f"{before.score:.1%} → {after.score:.1%}",
                      f"{before.majority_accuracy:.1%} → {after.majority_accuracy:.1%}")  # fmt: skip
    console.print(table)
    chosen = (f"the best val 2AFC at epoch {result.best_epoch} of {len(result.losses)}" if result.val_scores
              else f"the last epoch ({result.best_epoch})")  # fmt: skip
    console.print(f"wrote {out} ({chosen}); use it with: adapt tune --method full --weights {out}")
