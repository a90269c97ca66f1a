"""The options of `adapt soup`, from the command line and a YAML file alike, checked in one place.

YAML keys are the long option names (`max-shard-size` or `max_shard_size`); options given
on the command line win over the file. Everything then goes through `adapt.config.build`,
so a YAML file cannot skip a check that the command line makes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from adapt.config import MAX_SEED, build, option
from adapt.errors import AdaptError
from adapt.merge import arithmetic

RECIPES = ("uniform", "weighted", "task-arithmetic", "ties", "dare")
DTYPES = ("float32", "float16", "bfloat16")
SIZE_UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}


@dataclasses.dataclass
class SoupOptions:
    ingredients: list[str] = dataclasses.field(default_factory=list)
    out: str | None = None
    recipe: str = option("uniform", choices=RECIPES)
    weights: str | list[float] | None = None  # ingredient coefficients ("0.2,0.5,0.3" or a list)
    allow_negative: bool = False  # coefficients below zero (extrapolation)
    greedy: bool = False
    data: str | None = None
    split: str = option("val", choices=("val", "test", "train"))
    base: str | None = None
    scale: float = option(1.0, low=-100, high=100)
    density: float = option(0.2, low=0, low_open=True, high=1)
    drop: float = option(0.5, low=0, high=1, high_open=True)
    seed: int = option(0, low=0, high=MAX_SEED)
    dtype: str | None = option(None, choices=(None, *DTYPES))
    max_shard_size: str | int | None = None
    backbone: str | None = None
    overwrite: bool = False

    def coefficients(self) -> list[float] | None:
        """The ingredient weights: finite; non-negative with a positive sum unless allow_negative."""
        if self.weights is None:
            return None
        raw = self.weights.split(",") if isinstance(self.weights, str) else self.weights
        try:
            values = [float(v) for v in raw]
        except (TypeError, ValueError):
            raise AdaptError(f"--weights expects numbers separated by commas, got {self.weights!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise AdaptError(f"--weights must be finite numbers, got {self.weights!r}")
        if len(values) != len(self.ingredients):
            raise AdaptError(f"{len(values)} weights for {len(self.ingredients)} ingredients")
        if not self.allow_negative and (min(values) < 0 or sum(values) <= 0):
            raise AdaptError("--weights must be >= 0 with a positive sum (--allow-negative to extrapolate)")
        if sum(values) == 0:
            raise AdaptError("--weights must not sum to zero: the soup divides by their sum")
        return values

    def merge_method(self) -> arithmetic.MergeMethod:
        """The recipe, refusing options that it would ignore."""
        coefficients = self.coefficients()
        recipe = "weighted" if coefficients is not None and self.recipe == "uniform" else self.recipe
        if coefficients is not None and recipe != "weighted":
            raise AdaptError(f"--weights are ingredient coefficients of a weighted soup; recipe {recipe} does not use them")
        if recipe == "weighted" and coefficients is None:
            raise AdaptError("recipe weighted needs --weights, one per ingredient")
        if recipe in ("uniform", "weighted") and self.base is not None:
            raise AdaptError(f"recipe {recipe} averages the ingredients; --base is for task-arithmetic, ties and dare")
        return {
            "uniform": lambda: arithmetic.Uniform(),
            "weighted": lambda: arithmetic.Weighted(coefficients),
            "task-arithmetic": lambda: arithmetic.TaskArithmetic(self.scale),
            "ties": lambda: arithmetic.Ties(self.density, self.scale),
            "dare": lambda: arithmetic.Dare(self.scale, self.drop, self.seed),
        }[recipe]()

    def shard_bytes(self) -> int | None:
        return parse_size(self.max_shard_size)

    def check_greedy(self) -> None:
        """A greedy soup ranks on held-out data and averages uniformly; it uses no recipe options."""
        if not self.data:
            raise AdaptError("--greedy needs held-out data: --data SPEC (e.g. digits) and --split")
        ignored = [name for name, value in (("--recipe", self.recipe != "uniform"), ("--weights", self.weights is not None),
                   ("--base", self.base is not None), ("--max-shard-size", self.max_shard_size is not None)) if value]  # fmt: skip
        if ignored:
            raise AdaptError(f"--greedy does not use {', '.join(ignored)}")


def parse_size(text: str | int | None) -> int | None:
    """'2GB', '500MB', '64KB' or a byte count."""
    if text is None:
        return None
    upper = str(text).strip().upper()
    for unit, factor in SIZE_UNITS.items():
        number = upper[: -len(unit)]
        if upper.endswith(unit) and number.replace(".", "", 1).isdigit():
            size = int(float(number) * factor)
            break
    else:
        if not upper.isdigit():
            raise AdaptError(f"cannot read size {text!r}: use e.g. 2GB, 500MB or a byte count")
        size = int(upper)
    if size <= 0:
        raise AdaptError(f"--max-shard-size must be positive, got {text!r}")
    return size


def soup_options(given: dict[str, Any], config: str | Path | None) -> SoupOptions:
    """Command-line values (only those given) over a YAML file's, checked as one SoupOptions."""
    values: dict[str, Any] = {}
    if config is not None:
        values.update(_read_yaml(Path(config)))
    values.update(given)
    return build(SoupOptions, values, f"soup options{f' ({config})' if config else ''}")


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise AdaptError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise AdaptError(f"config {path} must be a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in loaded.items()}
