"""mergekit's merge configuration (arcee-ai/mergekit, mergekit/config.py), read as is for the methods both share.

    models:
      - model: ft1.safetensors
        parameters: {weight: 0.5, density: 0.7}
      - model: ft2.safetensors
        parameters: {weight: [0, 0.5, 1]}   # a gradient over the blocks
    merge_method: ties
    base_model: pretrained.safetensors
    parameters: {normalize: true, lambda: 1.0}
    dtype: float16

Each method gives the tensors mergekit's definition gives, tensor by tensor (merge_methods/linear.py, slerp.py,
model_stock.py, and generalized_task_arithmetic.py with sparsify.py for the other four):
- linear: sum_i w_i theta_i, divided by sum_i w_i when `normalize` (the default)
- task_arithmetic, ties, dare_linear, dare_ties: tau_i = theta_i - base, sparsified at its `density` (ties: the
  int(density * n) largest magnitudes of the tensor; dare: each entry kept with probability density), rescaled to
  its former L1 norm when `rescale` (dare's default), times w_i; ties and dare_ties keep the entries whose sign
  agrees with that of sum_i w_i tau_i (a sum >= 0 counts as +); the sum of what is kept is divided, when `normalize`
  (ties' default), by the sum of the weights kept (task_arithmetic, dare_linear: by sum_i w_i), times `lambda`,
  plus the base
- slerp: base_model and one other model, at `t` (the other's weight); model_stock: base_model and two or more
  others, as adapt's model-stock (filter_wise false)
A parameter is a number, a gradient (a list of numbers interpolated over the model's blocks: block b of B at
b / (B - 1), tensors outside the blocks at the gradient's start, as mergekit's pre-layer weights), or a list of
{filter, value} of which the first whose filter is in the tensor's name applies; a model's own parameters come
before the top-level ones.

Where adapt differs, by design: each merge is computed in fp32 and written in `dtype` (mergekit computes in it);
dare's drops are seeded per tensor and model (seed 0, or --seed), so a merge can be repeated; BatchNorm statistics
are averaged, as in every adapt soup (mergekit's language models have none). Other keys and methods are refused
by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Any, ClassVar

import torch

from adapt.errors import AdaptError
from adapt.merging.recipes import ModelStock, Recipe, slerp

READ_KEYS = ("models", "merge_method", "base_model", "parameters", "dtype", "out_dtype")
DTYPES = ("float32", "float16", "bfloat16")
REQUIRED = "required"  # a parameter's default that says it must be given
RESCALE_EPSILON = 1e-7  # sparsify.py rescaled_masked_tensor: norms below it are not rescaled


@dataclasses.dataclass(frozen=True)
class TaskArithmeticStyle:
    """How GeneralizedTaskArithmeticMerge runs each method (mergekit/merge_methods/registry.py)."""

    consensus: bool  # sign election ("sum")
    sparsification: str | None  # "magnitude" | "random"
    normalize: bool
    rescale: bool


STYLES = {
    "task_arithmetic": TaskArithmeticStyle(False, None, False, False),
    "ties": TaskArithmeticStyle(True, "magnitude", True, False),
    "dare_ties": TaskArithmeticStyle(True, "random", False, True),
    "dare_linear": TaskArithmeticStyle(False, "random", False, True),
}
# each method's top-level parameters and each model's (merge_methods/*.py: parameters(), tensor_parameters())
METHOD_PARAMETERS = {
    "linear": ({"normalize"}, {"weight"}),
    **{name: ({"int8_mask", "normalize", "rescale", "lambda"}, {"weight", "density"}) for name in STYLES},
    "slerp": ({"t"}, set()),
    "model_stock": ({"filter_wise"}, set()),
}


@dataclasses.dataclass
class Parameters:
    """A merge's parameters: each model's own (in the ingredients' order), then the top-level ones."""

    shared: dict[str, Any]
    per_model: list[dict[str, Any]]
    blocks: int  # the number of blocks of the model, the span of a gradient

    def value(self, name: str, key: str, model: int | None = None, default: Any = None) -> Any:
        position = block_position(key, self.blocks)
        own = [self.per_model[model].get(name)] if model is not None else []
        for setting in [*own, self.shared.get(name)]:
            found = evaluate(setting, key, position) if setting is not None else None
            if found is not None:
                return found
        if default == REQUIRED:
            which = f" of model {model + 1}" if model is not None else ""
            raise AdaptError(f"mergekit config: the parameter '{name}'{which} is required (none applies to '{key}')")
        return default


def block_position(key: str, blocks: int) -> float:
    """Where a tensor sits for a gradient: block b of B at b / (B - 1) (mergekit plan.py), others at 0."""
    found = re.search(r"(?:^|\.)blocks\.(\d+)\.", key)
    if found is None:
        return 0.0
    return int(found.group(1)) / (blocks - 1) if blocks > 1 else 1.0


def _numbers(values: Any) -> bool:
    """A list of numbers (a gradient), booleans excluded."""
    return isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def evaluate(setting: Any, key: str, position: float) -> Any:
    """mergekit's evaluate_setting: a number, a gradient at `position`, or the first conditional that applies."""
    if isinstance(setting, (bool, int, float)):
        return setting
    if isinstance(setting, dict):
        setting = [setting]
    if _numbers(setting):
        scaled = position * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        return (1 - (scaled - low)) * setting[low] + (scaled - low) * setting[high]
    for condition in setting:
        rule = condition.get("filter")
        if rule is None or rule == "*" or rule in key:
            return evaluate(condition["value"], key, position)
    return None


def check_setting(setting: Any, where: str) -> None:
    """A parameter as mergekit's ParameterSetting types it, or one line saying where it is not."""
    if isinstance(setting, (bool, int, float)):
        return
    conditions = [setting] if isinstance(setting, dict) else setting
    if not isinstance(conditions, list) or not conditions:
        raise AdaptError(f"mergekit config: {where} takes a number, a list of numbers or filter/value pairs, "
                         f"got {str(setting)[:60]!r}")  # fmt: skip
    if _numbers(conditions):
        return
    for condition in conditions:
        if not isinstance(condition, dict) or "value" not in condition or set(condition) - {"filter", "value"}:
            raise AdaptError(f"mergekit config: {where}: each entry of a conditional is {{filter: NAME, value: ...}}, "
                             f"got {str(condition)[:60]!r}")  # fmt: skip
        if not isinstance(condition.get("filter", ""), (str, type(None))):
            raise AdaptError(f"mergekit config: {where}: a filter is part of a tensor name, got {condition['filter']!r}")
        if isinstance(condition["value"], (dict, list)) and not _numbers(condition["value"]):
            raise AdaptError(f"mergekit config: {where}: a conditional's value is a number or a list of numbers")
        check_setting(condition["value"], where)


def _number(value: Any, name: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdaptError(f"mergekit config: '{name}' for '{key}' must be a number, got {value!r}")
    return float(value)


@dataclasses.dataclass
class MergekitLinear(Recipe):
    parameters: Parameters
    name: ClassVar[str] = "mergekit:linear"

    def weights(self, key: str, count: int) -> list[float]:
        return [_number(self.parameters.value("weight", key, i, REQUIRED), "weight", key) for i in range(count)]

    def merge(self, key, load, count, base):
        weights = self.weights(key, count)
        total = load(0) * weights[0]
        for i in range(1, count):
            total.add_(load(i), alpha=weights[i])
        if self.parameters.value("normalize", key, default=True):
            if sum(weights) == 0:
                raise AdaptError(f"mergekit config: the weights for '{key}' sum to zero; normalize divides by them")
            total /= sum(weights)
        return total

    def average(self, key, load, count):
        """BatchNorm statistics: by the weights when they are a convex combination, else uniformly."""
        convex = self.parameters.value("normalize", key, default=True) and min(self.weights(key, count)) >= 0
        return self.merge(key, load, count, None) if convex else super().average(key, load, count)


@dataclasses.dataclass
class MergekitTaskArithmetic(Recipe):
    method: str  # task_arithmetic, ties, dare_ties, dare_linear
    parameters: Parameters
    seed: int = 0  # dare's drops, per tensor and model
    needs_base: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.name = f"mergekit:{self.method}"
        self.style = STYLES[self.method]

    def weighted_delta(self, key: str, load, i: int, base: torch.Tensor, weight: float) -> torch.Tensor:
        tau = load(i) - base
        if self.style.sparsification is not None:
            density = _number(self.parameters.value("density", key, i, 1.0), "density", key)
            if not 0 <= density <= 1:
                raise AdaptError(f"mergekit config: density of model {i + 1} for '{key}' must be within 0 to 1, got {density}")
            if density < 1:
                tau = self._sparsified(tau, density, key, i)
        return tau * weight

    def _sparsified(self, tau: torch.Tensor, density: float, key: str, i: int) -> torch.Tensor:
        if self.style.sparsification == "magnitude":
            keep = int(density * tau.numel())
            if keep <= 0:
                raise AdaptError(f"mergekit config: density {density:g} keeps no entry of '{key}' ({tau.numel()} "
                                 "entries); mergekit refuses this too")  # fmt: skip
            mask = torch.zeros(tau.numel())
            mask[tau.abs().flatten().argsort(descending=True, stable=True)[:keep]] = 1
            mask = mask.view_as(tau)
        else:
            digest = hashlib.sha256(f"{self.seed}|{key}|{i}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            mask = (torch.rand(tau.shape, generator=generator) < density).float()
        masked = tau * mask
        if self.parameters.value("rescale", key, default=self.style.rescale):
            before, after = float(tau.abs().sum()), float(masked.abs().sum())
            if before >= RESCALE_EPSILON and after >= RESCALE_EPSILON:
                masked *= before / after
        return masked

    def merge(self, key, load, count, base):
        weights = [_number(self.parameters.value("weight", key, i, REQUIRED), "weight", key) for i in range(count)]
        mixed = torch.zeros_like(base)
        if self.style.consensus:  # two passes, one model at a time: the elected sign, then what agrees with it
            for i in range(count):
                mixed += self.weighted_delta(key, load, i, base, weights[i])
            majority = torch.where(mixed >= 0, 1.0, -1.0)
            mixed.zero_()
            divisor = torch.zeros_like(base)
            for i in range(count):
                delta = self.weighted_delta(key, load, i, base, weights[i])
                agrees = (torch.sign(delta) == majority).float()
                mixed += delta * agrees
                divisor += weights[i] * agrees
            divisor[divisor == 0] = 1
        else:
            for i in range(count):
                mixed += self.weighted_delta(key, load, i, base, weights[i])
            divisor = torch.tensor(sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0)
        if self.parameters.value("normalize", key, default=self.style.normalize):
            mixed /= divisor
        mixed *= _number(self.parameters.value("lambda", key, default=1.0), "lambda", key)
        return base + mixed


@dataclasses.dataclass
class MergekitSlerp(Recipe):
    parameters: Parameters  # the ingredients are [base_model, the other]
    name: ClassVar[str] = "mergekit:slerp"

    def check_count(self, count, has_base):
        if count != 2:
            raise AdaptError(f"mergekit slerp interpolates base_model and one other model; got {count} models")

    def t(self, key: str) -> float:
        return _number(self.parameters.value("t", key, default=REQUIRED), "t", key)

    def merge(self, key, load, count, base):
        return slerp(self.t(key), load(0), load(1))

    def average(self, key, load, count):
        return (1 - self.t(key)) * load(0) + self.t(key) * load(1)


@dataclasses.dataclass
class MergekitPlan:
    ingredients: list[str]
    base: str | None
    recipe: Recipe
    dtype: str | None


def read_mergekit(values: dict[str, Any], source: str, seed: int | None = None) -> MergekitPlan:
    """A mergekit configuration (a YAML mapping with `merge_method`) as adapt's ingredients, base and recipe."""
    unread = [key for key in values if key not in READ_KEYS]
    if unread:
        raise AdaptError(f"{source}: mergekit's '{unread[0]}' is not read by adapt (it reads {', '.join(READ_KEYS)})")
    method = values["merge_method"]
    if method not in METHOD_PARAMETERS:
        raise AdaptError(f"{source}: merge_method {str(method)[:40]!r} is not one adapt shares with mergekit "
                         f"({', '.join(METHOD_PARAMETERS)})")  # fmt: skip
    models = _models(values.get("models"), source)
    base = values.get("base_model")
    if base is not None and not isinstance(base, str):
        raise AdaptError(f"{source}: base_model is a path, got {str(base)[:60]!r}")
    shared = values.get("parameters") or {}
    if not isinstance(shared, dict):
        raise AdaptError(f"{source}: parameters is a mapping of name: value")
    top, own = METHOD_PARAMETERS[method]
    for name, setting in shared.items():
        if name not in top | own:
            raise AdaptError(f"{source}: merge_method {method} has no parameter '{name}' (it takes "
                             f"{', '.join(sorted(top | own)) or 'none'})")  # fmt: skip
        check_setting(setting, f"parameters.{name}")
    for number, (path, params) in enumerate(models, 1):
        for name, setting in params.items():
            if name not in own:
                takes = f"'{name}' (it takes {', '.join(sorted(own))})" if own else "parameters"
                raise AdaptError(f"{source}: model {number} ({path}): merge_method {method} takes no per-model {takes}")
            check_setting(setting, f"models[{number}].parameters.{name}")
    dtype = values.get("out_dtype") or values.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise AdaptError(f"{source}: dtype {str(dtype)[:30]!r} is not one of {', '.join(DTYPES)}")
    ingredients, params = _ingredients(method, models, base, source)
    parameters = Parameters(shared, params, _blocks(ingredients[0]))
    if method == "linear":
        recipe: Recipe = MergekitLinear(parameters)
    elif method == "slerp":
        recipe = MergekitSlerp(parameters)
    elif method == "model_stock":
        if shared.get("filter_wise", False) is not False:
            raise AdaptError(f"{source}: model_stock's filter_wise: true (an angle per row) is not supported; drop it")
        recipe = ModelStock()
    else:
        recipe = MergekitTaskArithmetic(method, parameters, seed or 0)
    return MergekitPlan(ingredients, base if recipe.needs_base else None, recipe, dtype)


def _models(models: Any, source: str) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(models, list) or not models:
        raise AdaptError(f"{source}: models is a list of {{model: PATH, parameters: {{...}}}}")
    entries = []
    for number, entry in enumerate(models, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise AdaptError(f"{source}: model {number} is not {{model: PATH, parameters: {{...}}}}")
        extra = set(entry) - {"model", "parameters"}
        if extra:
            raise AdaptError(f"{source}: model {number} has '{sorted(extra)[0]}', which adapt does not read")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise AdaptError(f"{source}: model {number}'s parameters is a mapping of name: value")
        entries.append((entry["model"], params))
    return entries


def _ingredients(method: str, models: list[tuple[str, dict[str, Any]]], base: str | None,
                 source: str) -> tuple[list[str], list[dict[str, Any]]]:  # fmt: skip
    """The ingredients in order, with their parameters: linear merges every model; the task-vector methods every
    model but the base (mergekit skips it); slerp [base, other]."""
    if method == "linear":
        if base is not None and base not in [path for path, _ in models]:
            raise AdaptError(f"{source}: linear merges the models listed; base_model {base!r} is not one of them")
        chosen = models
    else:
        if base is None:
            raise AdaptError(f"{source}: merge_method {method} needs base_model")
        chosen = [(path, params) for path, params in models if path != base]
        if method == "slerp":
            if len(chosen) != 1:
                raise AdaptError(f"{source}: slerp interpolates base_model and one other model; got {len(chosen)} others")
            chosen = [(base, {}), *chosen]
    return [path for path, _ in chosen], [params for _, params in chosen]


def _blocks(first: str) -> int:
    """How many blocks the models have (`blocks.N.` in their names): the span of a gradient."""
    from adapt.checkpoint import checkpoint_file
    from adapt.merging.tensors import TensorFile

    path = checkpoint_file(first) if Path(first).expanduser().is_dir() else first
    indices = {int(m.group(1)) for key in TensorFile(path).keys if (m := re.search(r"(?:^|\.)blocks\.(\d+)\.", key))}
    return max(indices) + 1 if indices else 0
