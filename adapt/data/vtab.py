"""VTAB-1k from its list files: <root>/<task>/{train800,val200,train800val200,test}.txt.

Each line is `images/<split>/<file> <label>`, relative to the task folder. The optional
`classnames.txt` (one name per line) gives class names; otherwise they are "0".."K-1".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapt.config import MAX_CLASSES, read_text_file
from adapt.data.images import ImageListDataset
from adapt.errors import AdaptError

# task -> number of classes, in the standard order (natural, specialized, structured)
VTAB_TASKS = {
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
    "svhn": 10, "sun397": 397,
    "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}  # fmt: skip
_ORDER = list(VTAB_TASKS)
VTAB_GROUPS = {"natural": _ORDER[:7], "specialized": _ORDER[7:11], "structured": _ORDER[11:]}
SPLIT_FILES = {"final": ("train800val200", "test"), "tune": ("train800", "val200")}


def is_vtab_task(path: Path) -> bool:
    return (path / "test.txt").is_file() or (path / "train800val200.txt").is_file()


def find_vtab_tasks(root: Path) -> list[Path]:
    """One task folder, or every task folder directly under `root` (standard order first)."""
    if not root.is_dir():
        raise AdaptError(f"VTAB folder not found: {root}")
    if is_vtab_task(root):
        return [root]
    tasks = [p for p in root.iterdir() if p.is_dir() and is_vtab_task(p)]
    if not tasks:
        raise AdaptError(f"no VTAB-1k task folders (with train800val200.txt/test.txt) under {root}")
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(tasks, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def _read_list(task: Path, split: str) -> list[tuple[Path, int]]:
    list_file = task / f"{split}.txt"
    if not list_file.is_file():
        raise AdaptError(f"missing VTAB list file {list_file}")
    items = []
    for number, line in enumerate(read_text_file(list_file).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise AdaptError(f"{list_file}:{number}: expected '<image path> <label>', got {line.strip()[:80]!r}")
        if int(parts[1]) >= MAX_CLASSES:  # checked before anything is sized by the labels
            raise AdaptError(f"{list_file}:{number}: label {parts[1][:20]} is too large (at most {MAX_CLASSES:,} classes)")
        items.append((task / parts[0], int(parts[1])))
    if not items:
        raise AdaptError(f"empty split: {list_file} lists no images")
    return items


def vtab_split(task: Path, split: str, num_classes: int, transform: Callable) -> ImageListDataset:
    """One list file of a task (e.g. train800) as a dataset."""
    return ImageListDataset(_read_list(task, split), num_classes, transform, str(task / f"{split}.txt"))


def vtab_splits(task: Path, protocol: str, transform: Callable) -> tuple[list[str], dict[str, ImageListDataset]]:
    """Train on train800val200 and test on test ("final"), or train800 and val200 ("tune")."""
    train_split, test_split = SPLIT_FILES[protocol]
    train_items, test_items = _read_list(task, train_split), _read_list(task, test_split)
    num_classes = VTAB_TASKS.get(task.name) or 1 + max(label for _, label in train_items + test_items)
    names_file = task / "classnames.txt"
    if names_file.is_file():
        class_names = [n.strip() for n in read_text_file(names_file).splitlines() if n.strip()]
        if len(class_names) != num_classes:
            raise AdaptError(f"{names_file} has {len(class_names)} names for {num_classes} classes")
    else:
        class_names = [str(i) for i in range(num_classes)]
    splits = {
        "train": ImageListDataset(train_items, num_classes, transform, str(task / f"{train_split}.txt")),
        "test": ImageListDataset(test_items, num_classes, transform, str(task / f"{test_split}.txt")),
    }
    return class_names, splits


FINAL, BEST = "final_epoch", "best_over_evaluations"
COLUMN_TITLES = {FINAL: "final epoch", BEST: "best over evaluations (test-selected)"}


def vtab_columns(final: dict[str, float], best: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Each figure of a VTAB-1k run, labelled: `final_epoch` (each task's accuracy after its last epoch) and,
    when the runs tested periodically, `best_over_evaluations` (each task's best test accuracy over them: what
    every paper reports); each with its tasks, group means, plain mean and mean of the group means."""
    columns = {FINAL: {"tasks": final, **vtab_means(final)}}
    if best and best.keys() == final.keys():
        columns[BEST] = {"tasks": best, **vtab_means(best)}
    return columns


def paper_column(columns: dict[str, dict[str, Any]]) -> str:
    """The column a paper's figures are comparable with: the best over evaluations when there is one."""
    return BEST if BEST in columns else FINAL


def save_vtab_table(folder: str | Path, accuracies: dict[str, float], paper: Any = None,
                    best: dict[str, float] | None = None) -> tuple[Path, Path]:  # fmt: skip
    """FOLDER/vtab.json and FOLDER/vtab.md: every task's accuracy, the group means, the plain mean of the
    tasks and the mean of the three group means, for the final epoch and (with `best`) the best over the
    periodic evaluations, each labelled (vtab_columns); with a preset's `paper` (adapt.presets.PaperFigures),
    its published figures beside the column they are comparable with (per task where published)."""
    from dataclasses import asdict

    from adapt.checkpoint import write_json_atomic, write_text_atomic

    folder = Path(folder)
    columns = vtab_columns(accuracies, best)
    beside = paper_column(columns)
    complete = len(accuracies) == len(VTAB_TASKS)  # a paper's means are over all 19 tasks
    write_json_atomic(folder / "vtab.json", {**columns, **({"paper": asdict(paper), "paper_beside": beside} if paper else {})})

    def cells(row: str, key: str, theirs: float | None) -> str:
        values = [column[key] if row == "mean" else column["tasks"][key] for column in columns.values()]
        shown = [f"{100 * value:.2f}" if value is not None else "n/a" for value in values]
        shown += [f"{theirs:.2f}" if theirs is not None else "-"] if paper else []
        return " | ".join(shown)

    header = " | ".join(COLUMN_TITLES[name] for name in columns) + (f" | paper (beside {COLUMN_TITLES[beside]})" if paper else "")
    lines = [f"| task | {header} |", "|---|" + "---:|" * (len(columns) + bool(paper))]
    lines += [f"| {task} | {cells('task', task, paper.tasks.get(task) if paper else None)} |" for task in accuracies]
    lines += [f"| {group} mean | {cells('mean', group, None)} |" for group in VTAB_GROUPS if columns[FINAL][group] is not None]
    plain_paper = paper.plain_mean if paper and complete else None
    group_paper = paper.group_mean if paper and complete else None
    lines.append(f"| plain mean of {len(accuracies)} tasks | {cells('mean', 'plain_mean', plain_paper)} |")
    lines.append(f"| mean of the 3 group means | {cells('mean', 'group_mean', group_paper)} |")
    lines.append(f"\nfinal epoch: each task's test accuracy after its last epoch. {COLUMN_TITLES[BEST]}: each task's best "
                 "test accuracy over the periodic evaluations, chosen on test as the papers report it.")  # fmt: skip
    if paper:
        lines.append(f"Paper figures: {paper.source}; they are the best test accuracy over each run, so compare them "
                     f"with the {COLUMN_TITLES[beside]} column.")  # fmt: skip
    write_text_atomic(folder / "vtab.md", "\n".join(lines) + "\n")
    return folder / "vtab.json", folder / "vtab.md"


def vtab_means(accuracies: dict[str, float]) -> dict[str, float | None]:
    """The plain mean over tasks and the mean of the three group means (None if a group is empty)."""
    plain = sum(accuracies.values()) / len(accuracies)
    group_means = {}
    for group, tasks in VTAB_GROUPS.items():
        found = [accuracies[t] for t in tasks if t in accuracies]
        group_means[group] = sum(found) / len(found) if found else None
    complete = [m for m in group_means.values() if m is not None]
    return {
        "plain_mean": plain,
        **group_means,
        "group_mean": sum(complete) / 3 if len(complete) == 3 else None,
    }
