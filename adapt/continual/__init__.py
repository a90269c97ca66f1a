"""Continual learning: class-incremental scenarios, learners (a registry), incremental heads, metrics.

    from adapt.continual import ContinualRun, class_incremental

    scenario = class_incremental("digits", initial=2, increment=2, seed=0)
    result = ContinualRun(method="ssf", head="language", learner="replay").fit(scenario)
    print(result.metrics.average_incremental_accuracy, result.metrics.forgetting)

The registry and the names below are imported when first used, so listing the learners
(the CLI's choices) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from adapt.errors import AdaptError
from adapt.registry import LazyRegistry

if TYPE_CHECKING:
    from adapt.continual.learners import Learner

LEARNERS = LazyRegistry({
    "naive": "adapt.continual.learners:Naive",
    "replay": "adapt.continual.learners:Replay",
    "lwf": "adapt.continual.learners:LwF",
    "icarl": "adapt.continual.learners:ICaRL",
    "prototype": "adapt.continual.learners:Prototype",
})  # fmt: skip

_LAZY = {
    "ExemplarMemory": "adapt.continual.memory",
    "herding_order": "adapt.continual.memory",
    "ContinualMetrics": "adapt.continual.metrics",
    "plot_matrix": "adapt.continual.metrics",
    "seen_accuracies": "adapt.continual.metrics",
    "ContinualModel": "adapt.heads.model",
    "ContinualResult": "adapt.continual.runner",
    "ContinualRun": "adapt.continual.runner",
    "Scenario": "adapt.continual.scenario",
    "Task": "adapt.continual.scenario",
    "class_incremental": "adapt.continual.scenario",
}


def create_learner(name: str, options: dict[str, Any] | None = None, seed: int = 0) -> Learner:
    """The learner `name` with its options checked (unknown names refused, ranges and choices)."""
    if name not in LEARNERS:
        raise AdaptError(f"unknown learner {name!r} (choose from {', '.join(LEARNERS)})")
    return LEARNERS[name].from_options(options or {}, seed)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapt.continual' has no attribute {name!r}")


__all__ = ["LEARNERS", "create_learner", *_LAZY]
