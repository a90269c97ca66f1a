"""An adapted model: backbone + fresh head + method, built new or from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from adapt.backbones import RANDOM_WEIGHTS, BackboneInfo, create_backbone, preprocessing
from adapt.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from adapt.errors import AdaptError
from adapt.methods import Method, count_trainable, create_method


@dataclass
class AdaptedModel:
    model: nn.Module
    method: Method
    backbone: BackboneInfo
    class_names: list[str]
    image_size: int

    @classmethod
    def create(
        cls,
        method: str,
        class_names: list[str],
        image_size: int | None,
        backbone: str,
        weights: str | None = None,
        options: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> AdaptedModel:
        """The backbone with a fresh head for `class_names`, adapted by `method` (seeded).

        image_size None means the backbone's default input size."""
        adapter = create_method(method, options)
        image_size = image_size or preprocessing(backbone).image_size
        model, info = create_backbone(backbone, weights, len(class_names), image_size, seed)
        model = adapter.apply(model)
        return cls(model, adapter, info, list(class_names), image_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, weights: str | None = None) -> tuple[AdaptedModel, CheckpointMeta]:
        """Rebuild the adapted model of a checkpoint; refuse other backbone weights than it was trained on."""
        tensors, meta = read_checkpoint(path)
        weights = weights or meta.backbone_weights
        if weights not in ("embedded", RANDOM_WEIGHTS) and not Path(weights).is_file():
            raise AdaptError(f"{path} was trained on backbone weights {weights}, which is not there; pass --weights")
        seed = int(meta.training.get("seed", 0))
        adapted = cls.create(meta.method, meta.class_names, meta.image_size, meta.backbone, weights,
                             meta.method_options, seed)  # fmt: skip
        if adapted.backbone.sha256 != meta.backbone_sha256:
            raise AdaptError(
                f"{path} was trained on {meta.backbone} weights with sha256 {meta.backbone_sha256[:12]}…, "
                f"but {weights} has {adapted.backbone.sha256[:12]}…"
            )
        adapted.method.load_trainable_state(adapted.model, tensors, source=f"tensors in {path}")
        return adapted, meta

    @property
    def mean(self) -> tuple[float, ...]:
        return self.backbone.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.backbone.preprocessing.std

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the adapted model."""
        return count_trainable(self.model), sum(p.numel() for p in self.model.parameters())

    def meta(self, training: dict[str, Any] | None = None) -> CheckpointMeta:
        return CheckpointMeta(
            method=self.method.name,
            method_options=self.method.options(),
            backbone=self.backbone.name,
            backbone_weights=self.backbone.weights,
            backbone_sha256=self.backbone.sha256,
            class_names=self.class_names,
            image_size=self.image_size,
            mean=list(self.mean),
            std=list(self.std),
            training=training or {},
        )

    def save(self, path: str | Path, training: dict[str, Any] | None = None) -> None:
        save_checkpoint(path, self.method.trainable_state(self.model), self.meta(training))
