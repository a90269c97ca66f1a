"""A model that runs the state dicts of a soup: to score candidates on held-out data, and to estimate Fishers.

A soup's ingredients (and every candidate it merges) are adapter checkpoints or plain state dicts of one
backbone. `StateModel.of(first)` builds the model once, shaped like the ingredient `first`; `load(state)`
puts any state of that shape into it, and `dataset(data, split)` gives a split preprocessed as the
ingredient was trained (image size, normalization, interpolation), its classes in the ingredient's order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapt.checkpoint import FORMAT_KEY
from adapt.errors import AdaptError, term
from adapt.merging.tensors import TensorFile


@dataclass
class StateModel:
    model: nn.Module
    load: Callable[[dict[str, torch.Tensor]], None]  # put a state of the ingredients' shape into `model`
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    class_names: list[str] | None  # the ingredients' class order, when they record it
    source: str  # the ingredient the model is shaped like

    @classmethod
    def of(cls, first: str | Path, backbone: str | None = None) -> StateModel:
        """The model for state dicts shaped like `first` (an adapter checkpoint or a plain state dict)."""
        from adapt.adapted import AdaptedModel
        from adapt.backbones import RANDOM_WEIGHTS, classifier_prefixes, create_backbone, preprocessing

        file = TensorFile(first)
        if FORMAT_KEY in file.metadata:
            adapted, meta = AdaptedModel.from_checkpoint(first)

            def load_adapter(state: dict[str, torch.Tensor]) -> None:
                adapted.method.load_trainable_state(adapted.model, state, source="soup")

            return cls(adapted.model, load_adapter, meta.image_size, adapted.mean, adapted.std, adapted.interpolation,
                       adapted.class_names, str(first))  # fmt: skip
        name = backbone or file.metadata.get("backbone")
        if name is None:
            raise AdaptError(f"{first} does not record its backbone; pass {term('backbone')}")
        defaults = preprocessing(name)
        size = int(file.metadata.get("image_size", defaults.image_size))
        mean = tuple(json.loads(file.metadata["mean"])) if "mean" in file.metadata else defaults.mean
        std = tuple(json.loads(file.metadata["std"])) if "std" in file.metadata else defaults.std
        probe, _ = create_backbone(name, RANDOM_WEIGHTS, 1, size)
        head = f"{classifier_prefixes(probe)[0]}.weight"
        if head not in file.keys:
            raise AdaptError(f"{first} has no classifier '{head}' for {name}")
        model, _ = create_backbone(name, RANDOM_WEIGHTS, file.shape(head)[0], size)
        return cls(model, model.load_state_dict, size, mean, std,
                   file.metadata.get("interpolation", defaults.interpolation), _class_names(file), str(first))  # fmt: skip

    def dataset(self, data: str, split: str, purpose: str) -> torch.utils.data.Dataset:
        """`split` of `data` as the ingredients see it; `purpose` names what it is for, in the error."""
        from adapt.data import load_data
        from adapt.data.subsets import align_classes

        splits = load_data(data, self.image_size, self.mean, self.std, augment="off", interpolation=self.interpolation)
        dataset = getattr(splits, split)
        if dataset is None:
            raise AdaptError(f"{data} has no {split} split for {purpose}")
        if self.class_names is not None:
            dataset = align_classes(dataset, splits.class_names, self.class_names, self.source)
        return dataset


def held_out_accuracy(first: str | Path, data: str, split: str = "val",
                      backbone: str | None = None) -> Callable[[dict[str, torch.Tensor]], float]:  # fmt: skip
    """accuracy(state) on a split, for state dicts shaped like the ingredient `first`."""
    from adapt.devices import make_accelerator
    from adapt.evaluation import accuracy

    scorer = StateModel.of(first, backbone)
    dataset = scorer.dataset(data, split, "the held-out choice")
    accelerator = make_accelerator()

    def evaluate(state: dict[str, torch.Tensor]) -> float:
        scorer.load(state)
        return accuracy(scorer.model, dataset, accelerator)

    return evaluate


def _class_names(file: TensorFile) -> list[str] | None:
    """The class names a plain state dict records (adapt's merged models and soups do), else None."""
    try:
        names = json.loads(file.metadata["class_names"]) if "class_names" in file.metadata else None
    except ValueError:
        names = None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None
