"""The options of `adapt soup`, from the command line and a YAML file alike, checked in one place.

YAML keys are the long option names (`max-shard-size` or `max_shard_size`); options given
on the command line win over the file. The soup's own options become a `SoupOptions`, the
recipe's a recipe object (adapt.merging.recipes), both through `adapt.config`, so a YAML file
cannot skip a check that the command line makes, and an option that the chosen recipe
does not use is refused rather than ignored.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapt.config import build, option, read_yaml_mapping, refuse_unknown
from adapt.errors import AdaptError, term
from adapt.merging import RECIPES

if TYPE_CHECKING:
    from adapt.merging.recipes import Recipe

DTYPES = ("float32", "float16", "bfloat16")
SIZE_UNITS = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
RENAMED = {
    "weights": "soup's --weights is now --coeffs (ingredient coefficients); --weights means backbone weights elsewhere",
    "greedy": "--greedy is now --recipe greedy",
}


@dataclasses.dataclass
class SoupOptions:
    ingredients: list[str] = dataclasses.field(default_factory=list)
    out: str | None = None
    recipe: str = option("uniform", choices=tuple(RECIPES))
    base: str | None = None
    data: str | list[str] | None = None  # held-out data (greedy, --scale auto); fisher: each ingredient's data
    split: str | None = option(None, choices=(None, "val", "test", "train"))  # None: val (fisher: train)
    dtype: str | None = option(None, choices=(None, *DTYPES))
    max_shard_size: str | int | None = None
    backbone: str | None = None
    rank: int | None = option(None, low=1, high=4096)  # LoRA soups: re-compress to a LoRA adapter of this rank
    overwrite: bool = False

    def shard_bytes(self) -> int | None:
        return parse_size(self.max_shard_size)


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
        raise AdaptError(f"{term('max_shard_size')} must be positive, got {text!r}")
    return size


def number_list(value: Any, name: str) -> list[float]:
    """'0.2,0.5' (or a YAML list) as numbers; `name` is the option, for the error."""
    raw = value.split(",") if isinstance(value, str) else value
    try:
        return [float(v) for v in raw]
    except (TypeError, ValueError):
        raise AdaptError(f"{term(name)} expects numbers separated by commas, got {value!r}") from None


def parse_coeffs(value: Any) -> list[float]:
    coeffs = number_list(value, "coeffs")
    if not all(math.isfinite(c) for c in coeffs):
        raise AdaptError(f"{term('coeffs')} must be finite numbers, got {value!r}")
    return coeffs


def soup_options(given: dict[str, Any], config: str | Path | None,
                 preset: dict[str, Any] | None = None) -> tuple[SoupOptions, Recipe]:  # fmt: skip
    """Command-line values (only those given) over a YAML file's over a preset's (adapt.presets): the soup's
    options and its recipe."""
    from adapt.merging.recipes import create_recipe, recipe_options

    recipe_keys = sorted({name for recipe in RECIPES for name in recipe_options(recipe)})
    from_file = read_yaml_mapping(Path(config)) if config is not None else {}
    if "merge_method" in from_file:
        return mergekit_options(given, from_file, f"mergekit config {config}", preset)
    values: dict[str, Any] = {**(preset or {}), **from_file, **given}
    if preset and "scale_grid" not in {**from_file, **given} and str(values.get("scale")) != "auto":
        values.pop("scale_grid", None)  # your fixed --scale replaces the preset's search, grid included
    source = f"soup options{f' ({config})' if config else ''}"
    for old, hint in RENAMED.items():
        if old in values:
            raise AdaptError(hint)
    refuse_unknown(values, [f.name for f in dataclasses.fields(SoupOptions)] + recipe_keys, source)
    recipe_values = {k: values.pop(k) for k in recipe_keys if k in values}
    if "coeffs" in recipe_values:
        recipe_values["coeffs"] = parse_coeffs(recipe_values["coeffs"])
        values.setdefault("recipe", "weighted")  # coefficients alone ask for a weighted soup
    options = build(SoupOptions, values, source)
    unused = [name for name in recipe_values if name not in recipe_options(options.recipe)]
    if unused:
        flags = ", ".join(term(name) for name in unused)
        raise AdaptError(f"recipe {options.recipe} does not use {flags}")
    recipe = create_recipe(options.recipe, recipe_values)
    if options.base is not None and not recipe.needs_base:
        takers = [name for name in RECIPES if RECIPES[name].needs_base]
        raise AdaptError(f"recipe {options.recipe} takes no {term('base')}; it is for {', '.join(takers)}")
    if options.max_shard_size is not None:
        options.shard_bytes()  # refuse a bad size before any work
    return options, recipe


# what the command line may add to a mergekit config: where and how to write, and dare's seed
MERGEKIT_FLAGS = ("out", "overwrite", "dtype", "max_shard_size", "seed")


def mergekit_options(given: dict[str, Any], from_file: dict[str, Any], source: str,
                     preset: dict[str, Any] | None) -> tuple[SoupOptions, Recipe]:  # fmt: skip
    """A mergekit configuration (adapt.merging.mergekit) and the flags that may go with it."""
    from adapt.merging.mergekit import read_mergekit

    if preset:
        raise AdaptError(f"{source} sets the merge itself; drop {term('preset')}")
    if "ingredients" in given:
        raise AdaptError(f"ingredients do not go with {source}: name the models in its models:")
    for name in given:
        if name not in MERGEKIT_FLAGS:
            raise AdaptError(f"{term(name)} does not go with {source}: its merge_method, models and parameters set the merge")
    seed = given.get("seed")
    plan = read_mergekit(from_file, source, seed)
    values = {k: v for k, v in given.items() if k != "seed"}
    options = build(SoupOptions, {"ingredients": plan.ingredients, "base": plan.base,
                                  **({"dtype": plan.dtype} if plan.dtype else {}), **values}, source)  # fmt: skip
    if options.max_shard_size is not None:
        options.shard_bytes()
    return options, plan.recipe
