"""Continual learning: class-incremental scenarios, learners with incremental heads, metrics.

    from adapt.continual import ContinualRun, class_incremental

    scenario = class_incremental("digits", initial=2, increment=2, seed=0)
    result = ContinualRun(method="ssf", head="language", learner="replay", memory=200).fit(scenario)
    print(result.metrics.average_incremental_accuracy, result.metrics.forgetting)
"""

from adapt.continual.memory import ExemplarMemory, herding_order
from adapt.continual.metrics import ContinualMetrics, plot_matrix, seen_accuracies
from adapt.continual.runner import LEARNERS, ContinualModel, ContinualResult, ContinualRun
from adapt.continual.scenario import Scenario, Task, class_incremental

__all__ = [
    "LEARNERS",
    "ContinualMetrics",
    "ContinualModel",
    "ContinualResult",
    "ContinualRun",
    "ExemplarMemory",
    "Scenario",
    "Task",
    "class_incremental",
    "herding_order",
    "plot_matrix",
    "seen_accuracies",
]
