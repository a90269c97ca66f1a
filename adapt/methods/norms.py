"""BatchNorm with its running statistics frozen inside the model.

PEFT methods keep the pretrained statistics (what makes their merge exact). Like timm's
`freeze_batch_norm_2d`, we change the modules themselves rather than asking every training
loop to put them back in eval mode, so `model.train()` in a user's own loop cannot move
them. Unlike timm's FrozenBatchNorm2d, the module keeps its trainable affine (BitFit and
SSF train it) and its state-dict keys (num_batches_tracked included), so a merged model is
still a plain timm state dict (adapt.methods.mixins); its forward computes what its class's
would, keeping less for backward.
"""

from __future__ import annotations

import torch
from torch import nn

from adapt.kernels.frozen_batchnorm import frozen_batchnorm_act, lean_activation
from adapt.methods.mixins import with_mixin


class FrozenStatistics:
    """Mixin over a BatchNorm class: `train()` leaves it in eval mode, normalizing with its running statistics.

    A BatchNorm2d (timm's BatchNormAct2d with a ReLU/ReLU6 or no activation included) then runs as
    one autograd node that keeps only its output (adapt.kernels.frozen_batchnorm), whatever trains
    its affine (nothing, BitFit, SSF's re-parameterized affine)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = lean_activation(self)
        if clip is None or x.ndim != 4:
            return super().forward(x)
        return frozen_batchnorm_act(x, self, self.weight, self.bias, clip)

    def train(self, mode: bool = True):
        super().train(mode)  # children (the act/drop of timm's BatchNormAct2d) follow `mode`
        self.training = False
        return self


def has_running_statistics(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None


def freeze_norm_statistics(model: nn.Module) -> int:
    """Freeze the running statistics of every BatchNorm in `model`; returns how many."""
    norms = [m for m in model.modules() if has_running_statistics(m)]
    for norm in norms:
        with_mixin(norm, FrozenStatistics)
    return len(norms)

