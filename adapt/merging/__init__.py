"""Folding adapters back into weights (reparam); merging models (soups, recipes).

RECIPES names the merge recipes of adapt.merging.recipes; a recipe's class is imported when
first used (adapt.registry), so listing them imports no torch.
"""

from adapt.registry import LazyRegistry

RECIPES = LazyRegistry({
    "uniform": "adapt.merging.recipes:Uniform",
    "weighted": "adapt.merging.recipes:Weighted",
    "task-arithmetic": "adapt.merging.recipes:TaskArithmetic",
    "ties": "adapt.merging.recipes:Ties",
    "dare": "adapt.merging.recipes:Dare",
    "greedy": "adapt.merging.recipes:Greedy",
    "wise-ft": "adapt.merging.recipes:WiseFT",
    "slerp": "adapt.merging.recipes:Slerp",
    "model-stock": "adapt.merging.recipes:ModelStock",
    "fisher": "adapt.merging.recipes:Fisher",
})  # fmt: skip

__all__ = ["RECIPES"]
