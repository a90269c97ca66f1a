"""SPT's allocation of a parameter budget from sensitivity scores (He et al., ICCV 2023).

Take the globally most sensitive k entries. A weight matrix whose count of selected
entries reaches (its structured cost / alpha_threshold) gets a structured module, costed as
built (spt.structured.structured_cost: LoRA of rank r costs r * (rows + cols); the official
sequential adapter 2 * rows * r + r + rows, the paper's formula);
a bias/norm vector trains whole when at least 20% of it is selected; every other tensor
with selected entries gets a sparse delta on exactly those. Tensors in `always` (a ViT's
cls_token) train whole and count. Two rules pick k:
- "exact" (ours, the default): the largest k whose total fits the budget, then the budget
  left over is filled with the next most sensitive sparse entries, so the count lands on it;
- "official" (the released code): k on a grid of 20,000 entries (0.02M .. 1.58M), the plan
  whose total is closest to the budget (it may be over or under).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapt.checkpoint import write_json_atomic
from adapt.config import binary_kind, build, option, read_text_file
from adapt.errors import AdaptError
from adapt.methods.spt.ranking import real_name
from adapt.methods.spt.structured import ADAPTER_FORMS, is_sequential, structured_cost

VECTOR_SHARE = 0.2
OFFICIAL_GRID = [round(0.02 * i * 1e6) for i in range(1, 80)]  # the released code's sweep of k
RULES = ("exact", "official")


def budget_amount(text: str | int) -> tuple[str, float]:
    """A budget's kind and size without the model: ("count", 400000.0) for '400000', '0.4M', '400k';
    ("share", 1.0) for '1%'. Refuses text that is not a budget, or zero."""
    raw = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmM%]?)", raw)
    if not match:
        raise AdaptError(f"cannot read budget {raw!r}: use e.g. 400000, 0.4M, 50k or 1%")
    number, unit = float(match.group(1)), match.group(2).lower()
    if number == 0:
        raise AdaptError(f"budget {raw!r} is zero; ask for at least one parameter")
    return ("share", number) if unit == "%" else ("count", number * {"": 1, "k": 1e3, "m": 1e6}[unit])


def parse_budget(text: str | int, total: int) -> int:
    """'400000', '0.4M', '50k', '1%' (of `total`) -> a parameter count in 1..total."""
    raw = str(text).strip()
    kind, amount = budget_amount(raw)
    budget = round(amount * total / 100) if kind == "share" else round(amount)
    if budget <= 0:
        raise AdaptError(f"budget {raw!r} is zero; ask for at least one parameter")
    if budget > total:
        raise AdaptError(f"budget {raw!r} ({budget:,}) is larger than the {total:,} backbone parameters")
    return budget


@dataclass
class Allocation:
    budget: int = option(low=1)
    rank: int = option(low=1, high=4096)
    structured: list[str] = field(default_factory=list)  # matrices that get the structured module of `rank`
    unstructured: dict[str, list[int]] = field(default_factory=dict)  # matrix -> flat indices
    vectors: list[str] = field(default_factory=list)  # vectors that train whole
    costs: dict[str, int] = field(default_factory=dict)  # structured cost of every eligible matrix
    sizes: dict[str, int] = field(default_factory=dict)  # numel of every vector
    selected: dict[str, int] = field(default_factory=dict)  # sensitive count per parameter (for plots)
    structured_module: str = option("lora", choices=("lora", "adapter"))  # costs: structured_cost
    rule: str = option("exact", choices=RULES)  # how k was chosen (module docstring)
    adapter_form: str = option("sequential", choices=ADAPTER_FORMS)  # where adapters act (spt.structured)
    image_size: int | None = None  # of the images the sensitivity was scored on (None: not recorded)
    source: str = ""  # where the scores came from: the task and images, or the sensitivity file

    def trainable_params(self) -> int:
        return (
            sum(self.costs[n] for n in self.structured)
            + sum(len(i) for i in self.unstructured.values())
            + sum(self.sizes[n] for n in self.vectors)
        )

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Allocation:
        kind = binary_kind(Path(path))
        if kind is not None:
            raise AdaptError(f"{path} is {kind}, not an allocation JSON (adapt allocate writes one; a tune run keeps "
                             "its own as OUT/allocation.json)")  # fmt: skip
        try:
            values = json.loads(read_text_file(Path(path)))
        except (json.JSONDecodeError, RecursionError) as error:
            raise AdaptError(f"cannot read allocation {path}: {str(error).splitlines()[0]}") from None
        allocation = build(cls, values, f"allocation {path}")
        unpriced = [n for n in allocation.structured if n not in allocation.costs]
        unpriced += [n for n in allocation.vectors if n not in allocation.sizes]
        negative = [n for n, indices in allocation.unstructured.items() if any(i < 0 for i in indices)]
        if unpriced or negative:
            raise AdaptError(f"allocation {path} is inconsistent: {(unpriced + negative)[0]} has no cost/size or a negative index")
        return allocation


def module_cost(name: str, shape: tuple[int, ...], rank: int, module: str, adapter_form: str) -> int:
    """The structured cost of the tensor SPT calls `name` (a ViT's proj takes its adapter in parallel)."""
    layer = real_name(name)[0].rpartition(".")[0]
    return structured_cost(shape, rank, module, is_sequential(layer, module, adapter_form))


def allocate(
    scores: dict[str, torch.Tensor],
    budget: str | int,
    structured_eligible: set[str],
    rank: int = 8,
    alpha_threshold: float = 10.0,
    structured_module: str = "lora",
    rule: str = "exact",
    always: dict[str, int] | None = None,
    adapter_form: str = "sequential",
) -> Allocation:
    """Allocate `budget` parameters (a count, or text for parse_budget against the ranked entries) over
    `scores` (see the module docstring).

    structured_eligible: matrices the structured module can adapt (others only get sparse deltas).
    always: tensors (name -> size) outside `scores` that train whole and count against the budget.
    """
    always = always or {}
    names = sorted(scores)
    flat = torch.cat([scores[n].detach().float().flatten() for n in names])
    budget = parse_budget(budget, flat.numel())
    owner = torch.cat([torch.full((scores[n].numel(),), i, dtype=torch.long) for i, n in enumerate(names)])
    offsets = dict(zip(names, torch.tensor([0] + [scores[n].numel() for n in names]).cumsum(0).tolist()))
    order = torch.argsort(flat, descending=True, stable=True)  # ties broken by position: deterministic
    costs = {n: module_cost(n, tuple(scores[n].shape), rank, structured_module, adapter_form)
             for n in names if n in structured_eligible}  # fmt: skip
    sizes = {**{n: scores[n].numel() for n in names if scores[n].ndim == 1}, **always}
    fixed = sum(always.values())

    def plan(k: int) -> tuple[list[str], list[str], int]:
        counts = torch.bincount(owner[order[:k]], minlength=len(names)).tolist()
        structured = [n for i, n in enumerate(names) if n in costs and counts[i] >= costs[n] / alpha_threshold]
        vectors = [n for i, n in enumerate(names) if n in sizes and counts[i] >= VECTOR_SHARE * sizes[n]]
        whole = set(structured) | set(vectors)
        sparse = sum(c for i, c in enumerate(counts) if names[i] not in whole)
        total = fixed + sum(costs[n] for n in structured) + sum(sizes[n] for n in vectors) + sparse
        return structured, vectors, total

    if rule == "official":
        grid = [k for k in OFFICIAL_GRID if k <= flat.numel()] or [flat.numel()]
        low = min(grid, key=lambda k: (abs(plan(k)[2] - budget), -k))  # closest; ties: the larger k, as released
    else:
        low, high = 0, flat.numel()
        while low < high:  # largest k whose plan fits the budget
            mid = (low + high + 1) // 2
            low, high = (mid, high) if plan(mid)[2] <= budget else (low, mid - 1)
    structured, vectors, total = plan(low)

    taken = set(structured) | set(vectors)
    chosen = order[:low]
    room = budget - total
    if rule == "exact" and room > 0:  # fill with the next most sensitive entries of sparse tensors
        rest = order[low:]
        fillable = torch.tensor([n not in taken for n in names])[owner[rest]]
        chosen = torch.cat([chosen, rest[fillable][:room]])
    unstructured: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if n in taken:
            continue
        mine = chosen[owner[chosen] == i]
        if mine.numel():
            unstructured[n] = sorted((mine - offsets[n]).tolist())
    selected = dict(zip(names, torch.bincount(owner[order[:low]], minlength=len(names)).tolist()))
    return Allocation(budget, rank, structured, unstructured, [*always, *vectors], costs, sizes, selected,
                      structured_module, rule, adapter_form)  # fmt: skip


def _block_and_kind(name: str) -> tuple[str, str]:
    """'blocks.3.1.conv_pw.weight' -> ('blocks.3.1', 'conv_pw.weight'); no index: ('(other)', name)."""
    parts = name.split(".")
    last_index = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    if last_index < 0:
        return "(other)", name
    return ".".join(parts[: last_index + 1]), ".".join(parts[last_index + 1 :])


def plot_allocation(allocation: Allocation, path: str | Path) -> None:
    """Heatmap of sensitive counts per block (rows) and layer (columns), marked L (LoRA/adapter),
    S (sparse delta) or V (whole vector); blank cells got nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from adapt.checkpoint import atomic_path

    cells = {_block_and_kind(n): (count, n) for n, count in allocation.selected.items()}
    blocks = sorted({b for b, _ in cells}, key=lambda b: [int(p) if p.isdigit() else -1 for p in b.split(".")])
    kinds = sorted({k for _, k in cells})
    grid = np.full((len(blocks), len(kinds)), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(kinds) + 3), max(4, 0.3 * len(blocks) + 2)))
    for (block, kind), (count, name) in cells.items():
        i, j = blocks.index(block), kinds.index(kind)
        grid[i, j] = np.log10(1 + count)
        mark = "L" if name in allocation.structured else "S" if name in allocation.unstructured else (
            "V" if name in allocation.vectors else "")  # fmt: skip
        if mark:
            ax.text(j, i, mark, ha="center", va="center", fontsize=7, color="white", fontweight="bold")
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(kinds)), kinds, rotation=90, fontsize=7)
    ax.set_yticks(range(len(blocks)), blocks, fontsize=7)
    fig.colorbar(image, ax=ax, label="log10(1 + sensitive entries)")
    ax.set_title(f"SPT allocation: {allocation.trainable_params():,} of {allocation.budget:,} budget\n"
                 f"L = {allocation.structured_module}, S = sparse delta, V = whole vector", fontsize=9)  # fmt: skip
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
