"""`adapt continual`: a class-incremental run with an incremental (e.g. language-guided) head."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.table import Table

from adapt.cli.common import (backbone_option, cli, config_option, console, described, log_with_option, parse_options,
                               precision_option, resolved_record, resume_command, weights_option, workers_option)
from adapt.continual_learning import LEARNERS
from adapt.heads import DEFAULT_TEMPLATE, HEADS
from adapt.methods import METHODS


@cli.command()
@click.option("--data", default="digits", show_default=True, help="digits | folder:PATH | vtab:ROOT/TASK")
@click.option("--initial", type=click.IntRange(1), default=2, show_default=True, help="Classes in the first task.")
@click.option("--increment", type=click.IntRange(1), default=2, show_default=True, help="Classes in each later task.")
@click.option("--task-incremental", is_flag=True, help="Test each task among its own classes only (task id given).")
@click.option("--head", type=click.Choice(list(HEADS)), default="language", show_default=True)
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True, help="Language head: the class-name prompt.")
@click.option("--text-model", default=None, help="Language head: a sentence-transformers folder (default: bundled all-MiniLM-L6-v2).")
@click.option("--method", type=click.Choice([m for m in METHODS if m != "hst"]), default="ssf", show_default=True,
              help="What adapts the backbone (hst is not offered: it predicts through its own side network, "
                   "which an incremental head cannot read).")  # fmt: skip
@click.option("--option", "method_options", multiple=True, metavar="KEY=VALUE", help="A method option, e.g. rank=4.")
@click.option("--learner", type=click.Choice(list(LEARNERS)), default=None,
              help="How tasks are learned (adapt learners). Default: replay when --memory is given, else naive.")  # fmt: skip
@click.option("--learner-option", "learner_options", multiple=True, metavar="KEY=VALUE",
              help="A learner option, e.g. classifier=nme (icarl) or distill_weight=3 (lwf, icarl).")  # fmt: skip
@click.option("--memory", type=click.IntRange(1), default=None, help="replay, icarl: exemplars kept in total (default 200).")
@click.option("--selection", type=click.Choice(["herding", "random"]), default=None, help="replay, icarl: exemplar choice (default herding).")
@backbone_option
@weights_option
@click.option("--image-size", type=click.IntRange(16, 1024), default=None, help="Default: 96 for digits, else the backbone's.")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True, help="Per task.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="Default: the method's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Class order and training.")
@precision_option
@workers_option
@log_with_option
@click.option("--limit", type=click.IntRange(1), default=None, help="Use at most N images per split (quick checks).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/continual"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out: from its last finished task, inside the "
              "task it stopped in, with the options saved in OUT/config.yaml.")
@click.option("--overwrite", is_flag=True, help="Replace the continual run already in --out (only its files).")
@config_option
def continual(data, initial, increment, task_incremental, head, template, text_model, method, method_options, learner,
              learner_options, memory, selection, backbone, weights, image_size, epochs, batch_size, lr, seed, precision, workers,
              log_with, limit, out, resume, overwrite) -> None:  # fmt: skip
    """Learn a dataset's classes task by task; print and write the accuracy matrix and metrics.

    Writes OUT/task_N/ (the checkpoint after each task, which adapt eval, predict, info and
    merge accept), OUT/continual.json, OUT/accuracy_matrix.png and OUT/config.yaml (the options).

    \b
    Examples:
      adapt continual --data digits --initial 2 --increment 2 --head language --method ssf --memory 200
      adapt continual --head linear --learner naive --out runs/cl-linear
      adapt continual --learner icarl --memory 200 --learner-option classifier=nme
      adapt continual --learner prototype --method linear --head cosine
      adapt continual --config cl.yaml --seed 1
      adapt continual --out runs/continual --resume   # continue after Ctrl-C
    """
    from adapt.continual_learning import ContinualRun, class_incremental
    from adapt.train_config import TrainConfig

    learner = learner or ("replay" if memory else "naive")
    shortcuts = {"memory": memory, "selection": selection}
    learner_options = {**{k: v for k, v in shortcuts.items() if v is not None}, **parse_options(learner_options, "--learner-option")}
    head_options = {"template": template, "text_model": text_model} if head == "language" else {}
    train = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, precision=precision, workers=workers,
                        log_with=log_with)
    resume_command(f"adapt continual --out {shlex.quote(str(out))} --resume")
    run = ContinualRun(method, head, learner, learner_options, parse_options(method_options), head_options, weights, train,
                       out, overwrite, resume)  # fmt: skip
    scenario = class_incremental(data, initial, increment, seed, backbone, image_size, task_incremental, limit)
    sizes = ", ".join(str(len(t.class_names)) for t in scenario.tasks)

    def print_start() -> None:
        console.print(f"{learner} {method} with a {head} head on {scenario.backbone}, {scenario.name}: "
                      f"{len(scenario.tasks)} tasks of {sizes} classes, {scenario.image_size}px")  # fmt: skip

    from adapt.continual_learning.metrics import task_row_line

    test_sizes = [len(t.test) for t in scenario.tasks]

    def print_row(task, matrix, model) -> None:
        console.print(f"after task {task.index + 1} ({', '.join(task.class_names)}): "
                      f"{task_row_line(task.index, matrix, test_sizes)}")  # fmt: skip

    result = run.fit(scenario, on_task_end=print_row, record=resolved_record(), on_start=print_start,
                     on_note=lambda text: console.print(f"note: {text}"))
    console.print(_matrix_table(result.matrix, test_sizes))
    metrics = result.metrics
    console.print(
        f"average incremental accuracy {metrics.average_incremental_accuracy:.2%} (seen test samples pooled; "
        f"mean of tasks {metrics.average_incremental_accuracy_task_mean:.2%})  ·  last accuracy "
        f"{metrics.last_accuracy:.2%}  ·  forgetting {metrics.forgetting:.2%}  ·  backward transfer "
        f"{metrics.backward_transfer:+.2%}  ·  {out}/continual.json, accuracy_matrix.png",
        style="bold green",
    )


def _matrix_table(matrix: list[list[float | None]], test_sizes: list[int]) -> Table:
    """The accuracy matrix: row t = after training task t, column j = tested on task j; "seen" pools the
    seen tasks' test samples."""
    from adapt.continual_learning.metrics import seen_accuracies

    table = Table(title="accuracy matrix (rows: trained up to; columns: tested on)")
    for column in ["trained up to", *(f"T{j + 1}" for j in range(len(matrix))), "seen"]:
        table.add_column(column, justify="right")
    for t, (row, seen) in enumerate(zip(matrix, seen_accuracies(matrix, test_sizes))):
        table.add_row(f"T{t + 1}", *(f"{a:.1%}" for a in row[: t + 1]), *[""] * (len(matrix) - t - 1), f"{seen:.1%}")
    return table


@cli.command()
def learners() -> None:
    """List the continual learners with what they keep and their options (--learner-option KEY=VALUE).

    \b
    Examples:
      adapt learners
      adapt continual --learner lwf --learner-option distill_weight=1
    """
    import dataclasses

    table = Table(title="continual learners (adapt continual --learner NAME)")
    for column in ("learner", "trains", "options (defaults; --learner-option KEY=VALUE)"):
        table.add_column(column)
    for name in LEARNERS:
        learner = LEARNERS[name]
        defaults = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(learner.config_class)) or "-"
        table.add_row(name, "yes" if learner.trains else "no", defaults)
    console.print(table)
    console.print(described({name: LEARNERS[name].summary for name in LEARNERS}, "What each does:"), soft_wrap=False)
