"""Merge methods, tensor by tensor: uniform and weighted soups, task arithmetic, TIES, DARE.

Each method combines one key's tensors across ingredients, loading them one at a time
through `load(i)` (fp32) and accumulating, so memory holds a few tensors of one key no
matter how many ingredients there are. TIES reads each ingredient twice (sign election,
then the disjoint mean) to stay within that bound.

Formulas (task vector tau_i = theta_i - base):
- uniform: mean_i theta_i;  weighted: sum_i w_i theta_i / sum_i w_i
- task arithmetic: base + scale * sum_i tau_i
- TIES (Yadav et al. 2023): trim each tau_i to its top `density` share by magnitude,
  elect the sign of sum_i trimmed tau_i per entry, average the trimmed entries that agree
  with it; result base + scale * that mean
- DARE (Yu et al. 2024): drop each entry of tau_i with probability p, rescale the rest by
  1 / (1 - p), then task arithmetic; seeded per (seed, key, ingredient)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Loader = Callable[[int], torch.Tensor]


class MergeMethod:
    name: str = ""
    needs_base: bool = False

    def merge(self, key: str, load: Loader, count: int, base: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class Uniform(MergeMethod):
    name = "uniform"

    def merge(self, key, load, count, base):
        total = load(0).clone()
        for i in range(1, count):
            total += load(i)
        return total / count


@dataclass
class Weighted(MergeMethod):
    weights: Sequence[float] = ()
    name = "weighted"

    def merge(self, key, load, count, base):
        total = load(0) * self.weights[0]
        for i in range(1, count):
            total.add_(load(i), alpha=self.weights[i])
        return total / sum(self.weights)


@dataclass
class TaskArithmetic(MergeMethod):
    scale: float = 1.0
    name = "task-arithmetic"
    needs_base = True

    def task_vector(self, key: str, load: Loader, i: int, base: torch.Tensor) -> torch.Tensor:
        return load(i) - base

    def merge(self, key, load, count, base):
        total = torch.zeros_like(base)
        for i in range(count):
            total += self.task_vector(key, load, i, base)
        return base + self.scale * total


def trim_to_density(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` share of entries with the largest magnitude (at least one), zero the rest."""
    keep = max(1, round(density * tau.numel()))
    if keep >= tau.numel():
        return tau
    threshold = tau.abs().flatten().kthvalue(tau.numel() - keep + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


@dataclass
class Ties(MergeMethod):
    density: float = 0.2
    scale: float = 1.0
    name = "ties"
    needs_base = True

    def merge(self, key, load, count, base):
        sign_votes = torch.zeros_like(base)
        for i in range(count):
            sign_votes += trim_to_density(load(i) - base, self.density)
        elected = torch.sign(sign_votes)
        total, agreeing = torch.zeros_like(base), torch.zeros_like(base)
        for i in range(count):
            tau = trim_to_density(load(i) - base, self.density)
            agrees = (torch.sign(tau) == elected) & (tau != 0)
            total += torch.where(agrees, tau, torch.zeros_like(tau))
            agreeing += agrees
        return base + self.scale * total / agreeing.clamp(min=1)


@dataclass
class Dare(TaskArithmetic):
    drop: float = 0.5
    seed: int = 0
    name = "dare"

    def task_vector(self, key, load, i, base):
        digest = hashlib.sha256(f"{self.seed}|{key}|{i}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        tau = load(i) - base
        keep = torch.rand(tau.shape, generator=generator) >= self.drop
        return torch.where(keep, tau / (1.0 - self.drop), torch.zeros_like(tau))
