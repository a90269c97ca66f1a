"""BatchNorm with its running statistics frozen inside the model.

PEFT methods keep the pretrained statistics (what makes their merge exact). Like timm's
`freeze_batch_norm_2d`, we change the modules themselves rather than asking every training
loop to put them back in eval mode, so `model.train()` in a user's own loop cannot move
them. Unlike timm's FrozenBatchNorm2d, the module keeps its trainable affine (BitFit and
SSF train it) and its state-dict keys (num_batches_tracked included), so a merged model is
still a plain timm state dict (adapt.methods.mixins).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from adapt.methods.mixins import with_mixin


class FrozenStatistics:
    """Mixin over a BatchNorm class: `train()` leaves it in eval mode, normalizing with its running statistics
    (adapt.methods.lean then runs it as a node that keeps only what its backward reads)."""

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


@contextmanager
def statistics_kept(model: nn.Module) -> Iterator[None]:
    """The running statistics of `model`'s BatchNorms that update (train mode), put back as they were on exit.

    Under gradient checkpointing a block runs twice in a step, its second forward inside backward: wrapped
    around backward, this lets the step's batch count once, as it does without checkpointing."""
    norms = [m for m in model.modules() if has_running_statistics(m) and m.training]
    kept = [[buffer.clone() for buffer in norm.buffers(recurse=False)] for norm in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, buffers in zip(norms, kept):
                for buffer, value in zip(norm.buffers(recurse=False), buffers):
                    buffer.copy_(value)
