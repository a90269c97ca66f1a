"""The plain baselines: full fine-tuning, linear probing, and BitFit (biases only)."""

from __future__ import annotations

import torch
from torch import nn

from adapt.methods.base import Method


class Full(Method):
    """Every weight trains; BatchNorm statistics update as in ordinary fine-tuning."""

    name = "full"
    summary = "fine-tune every weight (and BatchNorm statistics)"
    mergeable = True
    trains_norm_statistics = True
    default_lr = 1e-3

    def add_trainable(self, model: nn.Module) -> None:
        model.requires_grad_(True)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {key: t.detach() for key, t in model.state_dict().items()}


class Linear(Method):
    """Only the classifier head trains (a linear probe on frozen features)."""

    name = "linear"
    summary = "train the classifier head only"
    mergeable = True
    default_lr = 1e-2

    def add_trainable(self, model: nn.Module) -> None:
        pass


class BitFit(Method):
    """Every bias of the backbone (including norm shifts) and the head train."""

    name = "bitfit"
    summary = "train all biases (and norm shifts) and the head"
    mergeable = True
    default_lr = 1e-2

    def add_trainable(self, model: nn.Module) -> None:
        for key, parameter in model.named_parameters():
            if key.rsplit(".", 1)[-1] == "bias":
                parameter.requires_grad_(True)
