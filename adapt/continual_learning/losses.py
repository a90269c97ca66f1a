"""The training objectives of the continual learners, on logits (tested on tiny tensors).

`distillation` is the soft-target cross-entropy that LwF (Li & Hoiem 2017) and iCaRL
(Rebuffi et al. 2017) use in their common re-implementations (PyCIL): with temperature T,
-mean_i sum_c softmax(old_i / T)_c log_softmax(new_i / T)_c over the old classes' logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation(new: torch.Tensor, old: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the new model's softened old-class logits against the old model's."""
    targets = F.softmax(old / temperature, dim=-1)
    return -(targets * F.log_softmax(new / temperature, dim=-1)).sum(dim=-1).mean()


def lwf_loss(logits: torch.Tensor, labels: torch.Tensor, old: torch.Tensor | None, weight: float,
             temperature: float) -> torch.Tensor:  # fmt: skip
    """LwF: cross-entropy among the current task's classes only (labels >= known), plus
    `weight` x distillation of the old classes' logits towards the model before the task."""
    known = 0 if old is None else old.shape[-1]
    loss = F.cross_entropy(logits[:, known:], labels - known)
    if old is not None and known:
        loss = loss + weight * distillation(logits[:, :known], old, temperature)
    return loss


def icarl_loss(logits: torch.Tensor, labels: torch.Tensor, old: torch.Tensor | None, weight: float,
               temperature: float) -> torch.Tensor:  # fmt: skip
    """iCaRL: cross-entropy over every class seen (new images and exemplars), plus `weight` x
    distillation of the old classes' logits."""
    loss = F.cross_entropy(logits, labels)
    if old is not None and old.shape[-1]:
        loss = loss + weight * distillation(logits[:, : old.shape[-1]], old, temperature)
    return loss
