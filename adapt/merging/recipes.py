"""Merge recipes: small interchangeable classes in a registry, each with its options as dataclass fields.

A recipe combines one key's tensors across ingredients, loading them one at a time
through `load(i)` (fp32; possibly a view of its file, so never changed in place) and accumulating, so memory holds a few tensors of one key no
matter how many ingredients there are. Recipes that need facts about whole task vectors
(TIES's global trim threshold and majority sign) gather them first in `prepare`, which
streams over the ingredients key by key too.

Formulas (task vector tau_i = theta_i - base):
- uniform: mean_i theta_i;  weighted: sum_i c_i theta_i / sum_i c_i
- task arithmetic (Ilharco et al. 2023): base + scale * sum_i tau_i
- TIES (Yadav et al. 2023; as prateeky2806/ties-merging): trim each tau_i to the top
  `density` share of its entries by magnitude, over the whole task vector (or per tensor
  with trim="per-tensor"); elect each entry's sign as the sign of sum_i trimmed tau_i,
  where that sum is 0 the sign of the whole elected vector's sum (the majority sign);
  average the trimmed entries that agree with it; result base + scale * that mean
- DARE (Yu et al. 2024): drop each entry of tau_i with probability p, rescale the rest by
  1 / (1 - p), then task arithmetic; seeded per (seed, key, ingredient). With several drop rates
  (`drop_grid`) the soup runs MergeLM's protocol (merge_plms_glue.py L219, L297): lambda from the
  task-arithmetic search (no drop), then each rate at that lambda, keeping the first best
- greedy (Wortsman et al. 2022): a uniform soup of the ingredients chosen on held-out data
  (run by adapt.merging.soup.greedy_soup; `accept` ge as in the paper, or gt)
- WiSE-FT (Wortsman et al. 2022): one fine-tune and its base, (1 - alpha) base + alpha theta_1; `scale` is
  alpha (auto: 0.0, 0.1, ..., 1.0 on held-out data)
- SLERP, as mergekit defines it (mergekit/merge_methods/slerp.py): two ingredients, per tensor the spherical
  interpolation at t (`scale`, the second's weight) between the two flattened tensors, with the angle taken
  between their normalized copies and plain linear interpolation when they are nearly parallel (|cos| >
  0.9995); tensors that are not merged (BatchNorm statistics) interpolate linearly at t
- Model Stock (Jang et al., ECCV 2024): per tensor, the cosine between the ingredients' task vectors (for more
  than two, the mean over pairs, as mergekit's model_stock), t = k cos / (1 + (k - 1) cos), and
  t mean_i theta_i + (1 - t) base; the pairwise mean comes from the sum of the normalized task vectors
  (sum over pairs = (|sum|^2 - k) / 2), so memory holds two tensors of a key whatever k
- Fisher merging (Matena & Raffel 2022; as mmatena/model_merging): each ingredient's diagonal Fisher F_i,
  estimated on its own data beforehand (adapt.merging.fisher), and per entry sum_i c_i F_i theta_i / sum_i c_i F_i
  with c_i = 1/n, divided by the L2 norm of F_i over all its tensors (normalize_fishers), and the first
  ingredient's F floored at 1e-6 (fisher_floor, favor_target_model): where no ingredient is sensitive, the
  first one's value

Tensors that are not task vectors are averaged, never scaled, trimmed, elected or dropped
(`Recipe.average`): BatchNorm running statistics (a mean and a variance: a scaled or
summed variance can go negative) and tensors the base lacks (a head trained for new
classes). The average is uniform, or the soup's coefficients when they are convex.

`scale` may be "auto": the soup then picks it on held-out data from `scale_grid`, by
default the grid of the recipe's paper (`default_grid`). `needs_data` says whether a recipe chooses
anything on held-out data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

from adapt.config import MAX_SEED, build, option
from adapt.errors import AdaptError, term
from adapt.merging import RECIPES

Loader = Callable[[int], torch.Tensor]
# a key's loader for each key of the task vectors: (key, load(i) -> tau_i of that key)
TaskVectors = Callable[[], Iterable[tuple[str, Loader]]]
HISTOGRAM_BINS = 4096
BIN_CHUNK = 1 << 20  # entries binned at a time by the global trim's histogram passes
# task arithmetic: prateeky2806/ties-merging README, `task-vector_linear+0.1+1.01+0.1`
TASK_ARITHMETIC_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))
# TIES: prateeky2806/ties-merging README `$scale = linear+0.8+2.51+0.1` (np.arange, rounded to 1 decimal in
# src/ties_merging.py)
TIES_GRID = tuple(round(0.8 + 0.1 * i, 1) for i in range(18))
# DARE: yule-BUAA/MergeLM merge_plms_glue.py L219, scaling_coefficient_range of the task arithmetic DARE runs on
DARE_GRID = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
# WiSE-FT's alpha and SLERP's t, searched on held-out data
UNIT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
SLERP_PARALLEL = 0.9995  # mergekit's DOT_THRESHOLD: above it, linear interpolation


class Recipe:
    """The contract: `merge` one key; `prepare` whatever needs the whole task vectors first."""

    name: ClassVar[str] = ""
    needs_base: ClassVar[bool] = False  # combines task vectors (theta_i - base)
    uses_data: ClassVar[bool] = False  # chooses on held-out data
    estimates_on_data: ClassVar[bool] = False  # needs each ingredient's own data before merging (Fisher)
    default_grid: ClassVar[tuple[float, ...]] = ()  # the scales that scale="auto" tries, from the recipe's paper

    linear_in_scale: ClassVar[bool] = True  # merge(scale s) = base + s * (merge(scale 1) - base): auto needs one merge

    def check_count(self, count: int, has_base: bool) -> None:
        """Refuse a number of ingredients the recipe cannot merge (task vectors need a base, or two models)."""
        if count < (1 if self.needs_base and has_base else 2):
            raise AdaptError("a soup needs at least two ingredients")

    def prepare(self, count: int, task_vectors: TaskVectors) -> None:
        """Called once before merging, for recipes that need passes over the whole task vectors."""

    def record(self) -> dict[str, Any]:
        """What the soup's metadata keeps beside the options: facts the recipe found before merging."""
        return {}

    def merge(self, key: str, load: Loader, count: int, base: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def average(self, key: str, load: Loader, count: int) -> torch.Tensor:
        """A tensor that is not a task vector (BatchNorm statistics, a tensor the base lacks): the uniform mean."""
        total = load(0).clone()  # load(i) may be a view of its file: sums go into a tensor of our own
        for i in range(1, count):
            total += load(i)
        return total.div_(count)

    @property
    def auto_scale(self) -> bool:
        return getattr(self, "scale", None) == "auto"

    @property
    def needs_data(self) -> bool:
        """Whether the soup chooses something on held-out data (greedy's ingredients, a scale, a drop rate)."""
        return self.uses_data or self.auto_scale

    def grid(self) -> tuple[float, ...]:
        """The scales that `scale="auto"` tries: the user's, else the recipe paper's."""
        return tuple(getattr(self, "scale_grid", None) or self.default_grid)


@dataclasses.dataclass
class Uniform(Recipe):
    name: ClassVar[str] = "uniform"

    def merge(self, key, load, count, base):
        return self.average(key, load, count)


@dataclasses.dataclass
class Weighted(Recipe):
    coeffs: list[float] = dataclasses.field(default_factory=list)
    allow_negative: bool = False  # extrapolation; the coefficients must still not sum to zero
    name: ClassVar[str] = "weighted"

    def __post_init__(self) -> None:
        if not self.coeffs:
            raise AdaptError(f"recipe weighted needs {term('coeffs')}, one per ingredient")
        if not self.allow_negative and (min(self.coeffs) < 0 or sum(self.coeffs) <= 0):
            raise AdaptError(f"{term('coeffs')} must be >= 0 with a positive sum ({term('allow_negative')} to extrapolate)")
        if sum(self.coeffs) == 0:
            raise AdaptError(f"{term('coeffs')} must not sum to zero: the soup divides by their sum")

    def prepare(self, count, task_vectors):
        if count != len(self.coeffs):
            raise AdaptError(f"{len(self.coeffs)} coefficients for {count} ingredients")

    def merge(self, key, load, count, base):
        total = load(0) * self.coeffs[0]
        for i in range(1, count):
            total.add_(load(i), alpha=self.coeffs[i])
        return total.div_(sum(self.coeffs))

    def average(self, key, load, count):
        """The coefficients when they are convex (all >= 0), else the uniform mean: never an extrapolated statistic."""
        return self.merge(key, load, count, None) if min(self.coeffs) >= 0 else super().average(key, load, count)


@dataclasses.dataclass
class TaskArithmetic(Recipe):
    scale: float | str = option(1.0, low=-100, high=100)
    scale_grid: list[float] | None = None  # the scales that scale="auto" tries (default: default_grid)
    name: ClassVar[str] = "task-arithmetic"
    needs_base: ClassVar[bool] = True
    default_grid: ClassVar[tuple[float, ...]] = TASK_ARITHMETIC_GRID

    def merge(self, key, load, count, base):
        total = torch.zeros_like(base)  # the one tensor held beside the inputs: sums and scales go in place
        for i in range(count):
            total += self.task_vector(key, load, i, base)
        return total.mul_(self.scale).add_(base)

    def task_vector(self, key: str, load: Loader, i: int, base: torch.Tensor) -> torch.Tensor:
        return load(i) - base


@dataclasses.dataclass
class Dare(TaskArithmetic):
    drop: float = option(0.5, low=0, high=1, high_open=True)
    seed: int = option(0, low=0, high=MAX_SEED)
    drop_grid: list[float] | None = None  # several drop rates: chosen on held-out data (MergeLM's protocol)
    name: ClassVar[str] = "dare"
    default_grid: ClassVar[tuple[float, ...]] = DARE_GRID

    def __post_init__(self) -> None:
        if self.drop_grid is not None and not all(0 <= p < 1 for p in self.drop_grid):
            raise AdaptError(f"{term('drop')} rates must be in [0, 1), got {self.drop_grid}")

    @property
    def needs_data(self) -> bool:
        return super().needs_data or self.drop_grid is not None

    def task_vector(self, key, load, i, base):
        digest = hashlib.sha256(f"{self.seed}|{key}|{i}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        tau = load(i) - base
        keep = torch.rand(tau.shape, generator=generator) >= self.drop
        return torch.where(keep, tau / (1.0 - self.drop), torch.zeros_like(tau))


def trim_to_density(tau: torch.Tensor, density: float, own: bool = False) -> torch.Tensor:
    """Keep the `density` share of entries with the largest magnitude (at least one), zero the rest (in `tau`
    itself when it is the caller's `own` tensor, else in a copy)."""
    keep = max(1, round(density * tau.numel()))
    if keep >= tau.numel():
        return tau
    threshold = tau.abs().flatten().kthvalue(tau.numel() - keep + 1).values
    return _zero_below(tau, threshold, own)


def _zero_below(tau: torch.Tensor, threshold, own: bool) -> torch.Tensor:
    below = tau.abs() < threshold
    return tau.masked_fill_(below, 0) if own else tau.masked_fill(below, 0)


def global_threshold(tensors: Callable[[], Iterable[torch.Tensor]], density: float) -> float:
    """The magnitude of the k-th largest entry over all tensors (k = density share), exactly,
    in three streaming passes (max; a histogram of magnitudes; the entries of the bin that
    holds the k-th), so memory never holds more than one tensor and one bin.

    Every pass puts an entry in its bin by the same computation (`_bins`), so an entry on a
    bin edge is counted and gathered in one bin only, and ties are exact."""
    total = largest = 0
    for tensor in tensors():
        total += tensor.numel()
        largest = max(largest, float(tensor.abs().max())) if tensor.numel() else largest
    keep = max(1, round(density * total))
    if keep >= total or largest == 0:
        return 0.0
    counts = torch.zeros(HISTOGRAM_BINS, dtype=torch.long)
    for chunk in _chunks(tensors):
        counts += torch.bincount(_bins(chunk, largest), minlength=HISTOGRAM_BINS)
    above = counts.flip(0).cumsum(0).flip(0)  # entries in this bin or above
    index = int((above >= keep).nonzero().max())
    rank_in_bin = keep - (int(above[index + 1]) if index + 1 < HISTOGRAM_BINS else 0)  # k-th largest within the bin
    inside = [chunk.abs()[_bins(chunk, largest) == index] for chunk in _chunks(tensors)]
    values = torch.cat(inside).sort(descending=True).values
    return float(values[rank_in_bin - 1])


def _chunks(tensors: Callable[[], Iterable[torch.Tensor]]) -> Iterable[torch.Tensor]:
    """Every entry of the tensors, flat, in pieces of BIN_CHUNK: the bins' 8-byte temporaries stay small."""
    for tensor in tensors():
        yield from tensor.flatten().split(BIN_CHUNK)


def _bins(tensor: torch.Tensor, largest: float) -> torch.Tensor:
    """The histogram bin of each entry's magnitude: floor(|x| / largest * bins), the largest in the last bin."""
    scaled = tensor.abs().flatten().double() * (HISTOGRAM_BINS / largest)
    return scaled.long().clamp_(max=HISTOGRAM_BINS - 1)


@dataclasses.dataclass
class Ties(Recipe):
    density: float = option(0.2, low=0, low_open=True, high=1)
    scale: float | str = option(1.0, low=-100, high=100)
    trim: str = option("global", choices=("global", "per-tensor"))
    scale_grid: list[float] | None = None  # the scales that scale="auto" tries (default: default_grid)
    name: ClassVar[str] = "ties"
    needs_base: ClassVar[bool] = True
    default_grid: ClassVar[tuple[float, ...]] = TIES_GRID

    def __post_init__(self) -> None:
        self.thresholds: list[float] | None = None  # per ingredient, over its whole task vector (trim="global")
        self.majority: float = 1.0  # the sign of the elected vector's sum, for entries whose vote is 0

    def trimmed(self, tau: torch.Tensor, i: int, own: bool = False) -> torch.Tensor:
        """tau_i trimmed: in place when it is the caller's `own` tensor (memory), else a copy."""
        if self.thresholds is None:
            return trim_to_density(tau, self.density, own)
        return _zero_below(tau, self.thresholds[i], own)

    def prepare(self, count: int, task_vectors: TaskVectors) -> None:
        if self.trim == "global":
            self.thresholds = [
                global_threshold(lambda i=i: (load(i) for _, load in task_vectors()), self.density) for i in range(count)
            ]
        votes = 0.0
        for _, load in task_vectors():
            votes += float(torch.sign(self._vote_sum(load, count)).sum())
        self.majority = 1.0 if votes >= 0 else -1.0

    def _vote_sum(self, load: Loader, count: int, own: bool = False) -> torch.Tensor:
        total = self.trimmed(load(0), 0, own)
        total = total if own else total.clone()  # a trim that kept everything returns load(0) itself
        for i in range(1, count):
            total += self.trimmed(load(i), i, own)
        return total

    def merge(self, key, load, count, base):
        def tau(i: int) -> torch.Tensor:
            return load(i) - base

        votes = self._vote_sum(tau, count, own=True)  # tau(i) is a new tensor each time: ours to trim
        elected = votes.sign_().to(torch.int8)  # +-1 in a byte an entry
        del votes
        elected.masked_fill_(elected == 0, int(self.majority))
        total, agreeing = torch.zeros_like(base), torch.zeros(base.shape, dtype=torch.int16)
        for i in range(count):  # in place: the key's sum, count and elected sign, and one tau beside the inputs
            signed = self.trimmed(tau(i), i, own=True).mul_(elected)  # > 0 where tau_i agrees with the election
            agreeing += signed > 0
            total += signed.clamp_(min=0).mul_(elected)  # the agreeing entries of tau_i, the others 0
            del signed
        return total.div_(agreeing.clamp_(min=1)).mul_(self.scale).add_(base)


@dataclasses.dataclass
class WiseFT(TaskArithmetic):
    scale: float | str = option(0.5, low=-100, high=100)  # alpha: 0 is the base, 1 the fine-tune
    name: ClassVar[str] = "wise-ft"
    default_grid: ClassVar[tuple[float, ...]] = UNIT_GRID

    def check_count(self, count, has_base):
        if count != 1:
            raise AdaptError(f"recipe wise-ft interpolates one fine-tune with its {term('base')}; got {count} ingredients")


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """mergekit's slerp: the angle between the normalized tensors (a norm <= 1e-8 left as is), linear when
    they are nearly parallel."""
    n0, n1 = float(v0.norm()), float(v1.norm())
    dot = float(v0.flatten() @ v1.flatten()) / ((n0 if n0 > 1e-8 else 1.0) * (n1 if n1 > 1e-8 else 1.0))
    if abs(dot) > SLERP_PARALLEL:
        return torch.lerp(v0, v1, t)
    theta = math.acos(dot)
    out = v0 * (math.sin(theta * (1 - t)) / math.sin(theta))  # the one tensor held beside the inputs
    return out.add_(v1, alpha=math.sin(theta * t) / math.sin(theta))


@dataclasses.dataclass
class Slerp(Recipe):
    scale: float | str = option(0.5, low=-100, high=100)  # t: the second ingredient's weight
    scale_grid: list[float] | None = None  # the t that scale="auto" tries (default: default_grid)
    name: ClassVar[str] = "slerp"
    default_grid: ClassVar[tuple[float, ...]] = UNIT_GRID
    linear_in_scale: ClassVar[bool] = False

    def check_count(self, count, has_base):
        if count != 2:
            raise AdaptError(f"recipe slerp interpolates two ingredients; got {count}")

    def merge(self, key, load, count, base):
        return slerp(self.scale, load(0), load(1))

    def average(self, key, load, count):
        """Not a merged tensor (BatchNorm statistics): linear at t."""
        return (1 - self.scale) * load(0) + self.scale * load(1)


@dataclasses.dataclass
class ModelStock(Recipe):
    name: ClassVar[str] = "model-stock"
    needs_base: ClassVar[bool] = True

    def check_count(self, count, has_base):
        if count < 2:
            raise AdaptError(f"recipe model-stock needs at least two fine-tunes (and {term('base')}); got {count}")

    def merge(self, key, load, count, base):
        total, directions = torch.zeros_like(base), torch.zeros_like(base)
        for i in range(count):
            theta = load(i)
            total += theta
            tau = theta - base
            directions.add_(tau, alpha=1 / max(float(tau.norm()), 1e-12))
            del tau
        pairs = count * (count - 1) / 2
        cos = min(1.0, max(-1.0, (float(torch.linalg.vector_norm(directions)) ** 2 - count) / 2 / pairs))
        spread = 1 + (count - 1) * cos
        t = count * cos / spread if spread > 1e-12 else 0.0  # opposed task vectors: the base
        return total.mul_(t / count).add_(base, alpha=1 - t)


@dataclasses.dataclass
class Fisher(Recipe):
    examples: int = option(4096, low=1, high=10**6)  # per ingredient: model_merging scripts/compute_fisher.py L23
    floor: float = option(1e-6, low=0, low_open=True)  # scripts/merge_and_evaluate.py L34, fisher_floor
    normalize: bool = True  # scripts/merge_and_evaluate.py L36, normalize_fishers
    name: ClassVar[str] = "fisher"
    estimates_on_data: ClassVar[bool] = True  # each ingredient's Fisher comes from its own data

    def __post_init__(self) -> None:
        self.diagonals: list[Any] = []  # one TensorFile of F_i per ingredient (adapt.merging.fisher.estimate_fishers)
        self.norms: list[float] = []  # |F_i| over all its tensors
        self.estimates: list[dict[str, Any]] = []  # what each F_i was estimated on (data, split, examples, norm)

    def record(self) -> dict[str, Any]:
        return {"fisher_estimates": self.estimates}

    def prepare(self, count, task_vectors):
        if len(self.diagonals) != count:
            raise AdaptError(f"recipe fisher merges with each ingredient's Fisher: {len(self.diagonals)} for {count}")

    def coefficient(self, i: int, count: int) -> float:
        return 1.0 / count / (self.norms[i] if self.normalize else 1.0)

    def merge(self, key, load, count, base):
        weighted, denominator = None, None
        for i in range(count):
            theta = load(i)
            if weighted is None:
                weighted, denominator = torch.zeros_like(theta), torch.zeros_like(theta)
            if key not in self.diagonals[i].keys:  # a tensor without a gradient: no information
                diagonal = torch.full_like(theta, self.floor) if i == 0 else None
            else:
                diagonal = self.diagonals[i].get(key).float()
                diagonal = diagonal.clamp(min=self.floor) if i == 0 else diagonal
            if diagonal is not None:
                weighted.addcmul_(diagonal, theta, value=self.coefficient(i, count))
                denominator.add_(diagonal, alpha=self.coefficient(i, count))
        return weighted.div_(denominator)


@dataclasses.dataclass
class Greedy(Recipe):
    accept: str = option("ge", choices=("ge", "gt"))  # add an ingredient when the soup's accuracy is >= (paper) or >
    name: ClassVar[str] = "greedy"
    uses_data: ClassVar[bool] = True

    def improves(self, accuracy: float, best: float) -> bool:
        return accuracy >= best if self.accept == "ge" else accuracy > best


def recipe_options(name: str) -> list[str]:
    """The option names a recipe takes (its dataclass fields)."""
    return [f.name for f in dataclasses.fields(RECIPES[name])] if name in RECIPES else []


def create_recipe(name: str, options: dict[str, Any] | None = None) -> Recipe:
    """A recipe by name, its options checked (types, ranges; scale is a number or "auto")."""
    if name not in RECIPES:
        raise AdaptError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")
    options = dict(options or {})
    if isinstance(options.get("scale"), str) and options["scale"] != "auto":
        try:
            options["scale"] = float(options["scale"])
        except ValueError:
            raise AdaptError(f"{term('scale')} is a number or auto, got {options['scale']!r}") from None
    if name == "dare" and (isinstance(options.get("drop"), list) or "," in str(options.get("drop", ""))):
        options["drop_grid"] = parse_grid(options.pop("drop"), "drop")  # several rates: a search
    elif isinstance(options.get("drop"), str):  # one rate, as typed: its range is the option's to check
        from adapt.merging.options import number_list

        options["drop"] = number_list(options["drop"], "drop")[0]
    if options.get("scale_grid") is not None:
        options["scale_grid"] = parse_grid(options["scale_grid"])
        if options.setdefault("scale", "auto") != "auto":
            raise AdaptError(f"{term('scale_grid')} is the grid that {term('scale')} auto searches; drop the fixed scale")
    return build(RECIPES[name], options, f"recipe {name}")


def parse_grid(value: Any, name: str = "scale_grid") -> list[float]:
    """'0.5,1,1.5' (or a YAML list) as a list of distinct finite numbers (scales, or DARE's drop rates)."""
    from adapt.merging.options import number_list

    grid = number_list(value, name)
    if not grid or not all(math.isfinite(g) and abs(g) <= 100 for g in grid) or len(set(grid)) != len(grid):
        raise AdaptError(f"{term(name)} expects distinct numbers within [-100, 100], got {value!r}")
    return grid
