"""Folding adapters back into weights (reparam); merging models (soups, recipes).

RECIPES names the merge recipes of adapt.merge.recipes; a recipe's class is imported when
first used (adapt.registry), so listing them imports no torch.
"""

from adapt.registry import LazyRegistry

RECIPES = LazyRegistry({
    "uniform": "adapt.merge.recipes:Uniform",
    "weighted": "adapt.merge.recipes:Weighted",
    "task-arithmetic": "adapt.merge.recipes:TaskArithmetic",
    "ties": "adapt.merge.recipes:Ties",
    "dare": "adapt.merge.recipes:Dare",
    "greedy": "adapt.merge.recipes:Greedy",
    "wise-ft": "adapt.merge.recipes:WiseFT",
    "slerp": "adapt.merge.recipes:Slerp",
    "model-stock": "adapt.merge.recipes:ModelStock",
    "fisher": "adapt.merge.recipes:Fisher",
})  # fmt: skip

__all__ = ["RECIPES"]
