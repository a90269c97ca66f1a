"""Continual learning: class-incremental scenarios, learners (a registry), incremental heads, metrics.

    from adapt.continual_learning import ContinualRun, class_incremental

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
    from adapt.continual_learning.learners import Learner

LEARNERS = LazyRegistry({
    "naive": "adapt.continual_learning.learners:Naive",
    "replay": "adapt.continual_learning.learners:Replay",
    "lwf": "adapt.continual_learning.learners:LwF",
    "icarl": "adapt.continual_learning.learners:ICaRL",
    "prototype": "adapt.continual_learning.learners:Prototype",
})  # fmt: skip

_LAZY = {
    "ExemplarMemory": "adapt.continual_learning.memory",
    "herding_order": "adapt.continual_learning.memory",
    "ContinualMetrics": "adapt.continual_learning.metrics",
    "plot_matrix": "adapt.continual_learning.metrics",
    "seen_accuracies": "adapt.continual_learning.metrics",
    "ContinualModel": "adapt.heads.model",
    "ContinualResult": "adapt.continual_learning.runner",
    "ContinualRun": "adapt.continual_learning.runner",
    "Scenario": "adapt.continual_learning.scenario",
    "Task": "adapt.continual_learning.scenario",
    "class_incremental": "adapt.continual_learning.scenario",
}


def create_learner(name: str, options: dict[str, Any] | None = None, seed: int = 0) -> Learner:
    """The learner `name` with its options checked (unknown names refused, ranges and choices)."""
    if name not in LEARNERS:
        raise AdaptError(f"unknown learner {name!r} (choose from {', '.join(LEARNERS)})")
    return LEARNERS[name].from_options(options or {}, seed)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapt.continual_learning' has no attribute {name!r}")


__all__ = ["LEARNERS", "create_learner", *_LAZY]
