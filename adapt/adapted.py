"""An adapted model: backbone + fresh head + method, built new or from a checkpoint.

Three kinds of checkpoint rebuild into one: an adapter checkpoint (`adapt tune`), one
whose model has an incremental head (`adapt continual`'s task checkpoints), and a merged
model (`adapt merge`, or a soup of merged models), read as a plain network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.layers import use_reentrant_ckpt
from torch import nn

from adapt.backbones import RANDOM_WEIGHTS, BackboneInfo, create_backbone, preprocessing
from adapt.checkpoint import CheckpointMeta, checkpoint_file, read_checkpoint, save_checkpoint
from adapt.errors import AdaptError, term
from adapt.heads import ContinualModel, head_buffers, head_spec, rebuild_head
from adapt.methods import Method, count_trainable, create_method
from adapt.train_config import HEAD_INITS

if TYPE_CHECKING:
    from adapt.data import DataSplits
    from adapt.train_config import TrainConfig


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
        setup: tuple[DataSplits, TrainConfig] | None = None,
        head_init: str = HEAD_INITS[0],
        drop_path: float = 0.0,
    ) -> AdaptedModel:
        """The backbone with a fresh head (`head_init`, see HEAD_INITS) for `class_names`, adapted by `method`
        (seeded); `drop_path`: stochastic depth on its blocks while training.

        image_size None means the backbone's default input size. `setup`, the task's data and
        training config, is what the method may set itself up from first (Method.prepare)."""
        adapter = create_method(method, options)
        image_size = image_size or preprocessing(backbone).image_size
        model, info = create_backbone(backbone, weights, len(class_names), image_size, seed, head_init, drop_path)
        adapter.prepare(model, *(setup or (None, None)))
        model = adapter.apply(model)
        return cls(model, adapter, info, list(class_names), image_size)

    @classmethod
    def from_checkpoint(cls, path: str | Path, weights: str | None = None) -> tuple[AdaptedModel, CheckpointMeta]:
        """Rebuild the model of a checkpoint (a file, or a hub or run folder); refuse other backbone weights
        than it was trained on."""
        path = checkpoint_file(path)
        tensors, meta = read_checkpoint(path)
        if meta.merged:  # the file is the whole network: its weights are the backbone weights
            adapted = cls.create(meta.method, meta.class_names, meta.image_size, meta.backbone, str(path))
            adapted.preprocess_as(meta.mean, meta.std, meta.interpolation)
            return adapted, meta
        weights = weights or meta.backbone_weights
        if weights not in ("embedded", RANDOM_WEIGHTS) and not Path(weights).exists():
            raise AdaptError(f"{path} was trained on backbone weights {weights}, which is not there; pass {term('weights')}")
        seed = int(meta.training.get("seed", 0))
        if meta.head is None:
            adapted = cls.create(meta.method, meta.class_names, meta.image_size, meta.backbone, weights,
                                 meta.method_options, seed)  # fmt: skip
        else:
            adapted = cls.with_incremental_head(meta, weights, tensors, seed)
        if adapted.backbone.sha256 != meta.backbone_sha256:
            raise AdaptError(
                f"{path} was trained on {meta.backbone} weights with sha256 {meta.backbone_sha256[:12]}…, "
                f"but {weights} has {adapted.backbone.sha256[:12]}…"
            )
        adapted.load_state(tensors, source=f"tensors in {path}")
        adapted.preprocess_as(meta.mean, meta.std, meta.interpolation)
        return adapted, meta

    @classmethod
    def with_incremental_head(
        cls, meta: CheckpointMeta, weights: str, tensors: dict[str, torch.Tensor], seed: int
    ) -> AdaptedModel:
        """The model of a continual run's checkpoint: adapted backbone (no timm head) + its saved head."""
        method = create_method(meta.method, meta.method_options)
        backbone, info = create_backbone(meta.backbone, weights, 0, meta.image_size, seed)
        if method.apply(backbone) is not backbone:
            raise AdaptError(f"method {meta.method} cannot carry an incremental head")
        head = rebuild_head(meta.head, backbone.num_features, meta.class_names, tensors)
        return cls(ContinualModel(backbone, head), method, info, list(meta.class_names), meta.image_size)

    def preprocess_as(self, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str = "bicubic") -> None:
        """Inputs resized with `interpolation` and normalised with this mean and std (a run's --normalize and
        --interpolation, or what a checkpoint records)."""
        import dataclasses

        self.backbone = dataclasses.replace(self.backbone, preprocessing=dataclasses.replace(
            self.backbone.preprocessing, mean=tuple(mean), std=tuple(std), interpolation=interpolation))  # fmt: skip

    @property
    def mean(self) -> tuple[float, ...]:
        return self.backbone.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.backbone.preprocessing.std

    @property
    def interpolation(self) -> str:
        return self.backbone.preprocessing.interpolation

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each backbone block's input in training and run the block again in backward (timm's
        gradient checkpointing, torch's non-reentrant checkpoint): less memory, slower steps, the same gradients.
        BatchNorm statistics that train would count a batch twice; a training loop wraps backward in
        adapt.methods.norms.statistics_kept (adapt.train does)."""
        if enable and self.method.grad_checkpointing_refusal:
            raise AdaptError(f"method {self.method.name} cannot use gradient checkpointing: "
                             f"{self.method.grad_checkpointing_refusal}")  # fmt: skip
        if enable and use_reentrant_ckpt():
            raise AdaptError("TIMM_REENTRANT_CKPT is on: timm's re-entrant checkpoint would give a frozen backbone's "
                             "adapters no gradient; unset it to use gradient checkpointing")  # fmt: skip
        backbone = next((m for m in self.model.modules() if hasattr(m, "set_grad_checkpointing")), None)
        try:
            backbone.set_grad_checkpointing(enable)
        except (AttributeError, AssertionError, NotImplementedError):  # timm asserts where a model has none
            raise AdaptError(f"{self.backbone.name} has no gradient checkpointing in timm") from None

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the adapted model."""
        return count_trainable(self.model), sum(p.numel() for p in self.model.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the method's trainable tensors and an incremental head's buffers."""
        return {**self.method.trainable_state(self.model), **head_buffers(self.model)}

    def load_state(self, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        buffers = head_buffers(self.model)
        with torch.no_grad():
            for key, buffer in buffers.items():
                if key not in tensors or tensors[key].shape != buffer.shape:
                    raise AdaptError(f"{source or 'tensors'}: head buffer {key} is missing or misshapen")
                buffer.copy_(tensors[key])
        trainable = {k: v for k, v in tensors.items() if k not in buffers}
        self.method.load_trainable_state(self.model, trainable, source=source)

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
            interpolation=self.interpolation,
            training=training or {},
            head=head_spec(self.model.head) if isinstance(self.model, ContinualModel) else None,
        )

    def save(self, path: str | Path, training: dict[str, Any] | None = None) -> None:
        save_checkpoint(path, self.state(), self.meta(training))
