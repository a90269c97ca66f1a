"""The method registry: `--method NAME` choices come from here.

Each name maps to the class that implements it, imported when first used (adapt.registry),
so listing the names imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapt.errors import AdaptError, term
from adapt.registry import LazyRegistry

if TYPE_CHECKING:
    from adapt.methods.base import Method

METHODS = LazyRegistry({
    "ssf": "adapt.methods.ssf:SSF",
    "lora": "adapt.methods.lora:LoRA",
    "dora": "adapt.methods.peft_tuners:DoRA",
    "loha": "adapt.methods.peft_tuners:LoHa",
    "lokr": "adapt.methods.peft_tuners:LoKr",
    "ia3": "adapt.methods.peft_tuners:IA3",
    "oft": "adapt.methods.peft_tuners:OFT",
    "boft": "adapt.methods.peft_tuners:BOFT",
    "vera": "adapt.methods.peft_tuners:VeRA",
    "repadapter": "adapt.methods.repadapter:RepAdapter",
    "adaptformer": "adapt.methods.adaptformer:AdaptFormer",
    "vpt-deep": "adapt.methods.vpt:VPTDeep",
    "vpt-shallow": "adapt.methods.vpt:VPTShallow",
    "spt": "adapt.methods.spt:SPT",
    "hst": "adapt.methods.hst:HST",
    "full": "adapt.methods.baselines:Full",
    "linear": "adapt.methods.baselines:Linear",
    "bitfit": "adapt.methods.baselines:BitFit",
})  # fmt: skip


@dataclass(frozen=True)
class Flag:
    """A command-line shortcut for a method option: `--NAME VALUE` is `--option NAME=VALUE`."""

    methods: tuple[str, ...]  # the methods whose options dataclass has this field
    help: str
    sweep: bool = False  # several comma-separated values run one after another (adapt tune), the best kept


# the few options worth a flag of their own; every other option goes through --option KEY=VALUE
METHOD_FLAGS = {
    "rank": Flag(("lora", "dora", "spt"), "LoRA rank (default 8)."),
    "alpha": Flag(("lora", "dora", "loha", "lokr", "spt"), "LoRA's (and DoRA's, LoHa's, LoKr's) alpha; scaling = "
                  "alpha / rank (default 8)."),
    "dropout": Flag(("lora", "dora", "repadapter", "adaptformer", "vpt-deep", "vpt-shallow"),
                    "Dropout in the method's layers (LoRA, DoRA: default 0; RepAdapter, AdaptFormer, VPT's prompts: 0.1)."),
    "targets": Flag(("lora", "dora", "loha", "lokr", "ia3", "oft", "boft", "vera", "repadapter", "ssf"),
                    "Layers to adapt, a regex on layer names."),
    "budget": Flag(("spt",), "Trainable parameters, e.g. 0.4M or 1%, spent where the task is sensitive; several "
                   "(0.2M,0.4M,...) run one after another into OUT/budget-B/, each task keeping its best on test, as "
                   "SPT's runs do.", sweep=True),
    "allocation": Flag(("spt",), "A saved allocation JSON (adapt allocate) instead of --budget."),
    "alpha_threshold": Flag(("spt",), "A matrix gets LoRA when its sensitive count reaches cost / this (default 10)."),
}


def method_options(flags: dict[str, Any], pairs: dict[str, Any]) -> dict[str, Any]:
    """The options from the given flags (None: not given) and `--option` pairs; the method's options
    dataclass checks them (an option the method lacks is refused by name). One option given both ways
    with two different values is refused, naming both: neither silently wins."""
    given = {name: value for name, value in flags.items() if value is not None}
    for name, value in pairs.items():
        if name in given and given[name] != value:
            raise AdaptError(f"{name} is given twice with different values: {term(name)} {given[name]} and "
                             f"{term('option')} {name}={value}; give it once")  # fmt: skip
    return {**given, **pairs}


def create_method(name: str, options: dict[str, Any] | None = None) -> Method:
    if name not in METHODS:
        raise AdaptError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return METHODS[name].from_options(options or {})


@dataclass
class MethodRow:
    name: str
    trainable: int
    total: int
    mergeable: bool
    default_lr: float
    summary: str
    budgeted: bool
    defaults: str = ""  # the options users most often set, at their defaults (Method.defaults_line)
    default_weight_decay: float = 0.05
    unavailable: str = ""  # why the method cannot adapt this backbone (VPT needs a ViT's tokens); "" where it can


def method_rows(names: list[str], backbone: str, num_classes: int, image_size: int | None = None) -> list[MethodRow]:
    """Each method applied to a fresh `backbone` (random weights suffice to count)."""
    from adapt.backbones import RANDOM_WEIGHTS, create_backbone
    from adapt.methods.base import count_trainable

    from adapt.progress import Steps

    rows = []
    for name in Steps(f"counting each method's parameters on {backbone}", len(names)).over(names):
        model, _ = create_backbone(backbone, RANDOM_WEIGHTS, num_classes, image_size)
        method = create_method(name)
        try:
            model, unavailable = method.apply(model), ""
        except AdaptError as error:  # this backbone is not one the method takes
            unavailable = str(error)
        trainable, total = (0, 0) if unavailable else (count_trainable(model), sum(p.numel() for p in model.parameters()))
        summary = method.summary if unavailable else method.describe(model)
        rows.append(MethodRow(name, trainable, total, method.mergeable, method.default_lr, summary, method.budgeted,
                              method.defaults_line(), method.default_weight_decay, unavailable))  # fmt: skip
    return rows


def __getattr__(name: str) -> Any:
    """`Method` and `count_trainable` from adapt.methods.base, imported when first asked for."""
    if name in ("Method", "count_trainable"):
        from adapt.methods import base

        return getattr(base, name)
    raise AttributeError(f"module 'adapt.methods' has no attribute {name!r}")


__all__ = ["METHODS", "METHOD_FLAGS", "Flag", "Method", "MethodRow", "count_trainable", "create_method", "method_options",
           "method_rows"]
