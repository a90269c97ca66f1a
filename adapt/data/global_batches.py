"""Global batches split across processes, so that N processes train as one.

`batch_size` is the global batch, as the papers count it (SSF: 2 processes x 32 = 64). Each epoch draws one
permutation of the training set from the epoch's generator, the same on every process and the same as a
single process's `RandomSampler` with that generator; it is cut into global batches, and process r of N takes
the r-th of N near-equal contiguous pieces of each. The order therefore depends on the seed and the global
batch only, not on N. `share` is the piece's weight in the global mean (pieces/N of the batch), which the
loss is scaled by so that averaging gradients across processes gives the global batch's mean gradient also
when a last partial batch does not split evenly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from adapt.errors import AdaptError, term


def per_process_batch(global_batch: int, processes: int) -> int:
    """The batch each process takes; refused, naming the numbers, when the processes do not divide it."""
    if global_batch % processes:
        raise AdaptError(f"{term('batch_size')} {global_batch} is the global batch and must split evenly over "
                         f"{processes} processes ({global_batch} / {processes} is not a whole number)")  # fmt: skip
    return global_batch // processes


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's piece of each global batch of a seeded permutation (see the module docstring).

    A last partial batch is dropped with `drop_last`, and also when it has fewer images than processes
    (a process would get none)."""

    def __init__(self, size: int, global_batch: int, generator: torch.Generator, rank: int = 0, processes: int = 1,
                 drop_last: bool = False):  # fmt: skip
        self.size, self.global_batch, self.generator = size, global_batch, generator
        self.rank, self.processes, self.drop_last = rank, processes, drop_last

    def _batch_lengths(self) -> list[int]:
        full, rest = divmod(self.size, self.global_batch)
        keep_rest = rest and not self.drop_last and rest >= self.processes
        return [self.global_batch] * full + ([rest] if keep_rest else [])

    def __len__(self) -> int:
        return len(self._batch_lengths())

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        start = 0
        for length in self._batch_lengths():
            batch = order[start : start + length]
            start += length
            yield batch[self._piece(length, self.rank) : self._piece(length, self.rank + 1)]

    def _piece(self, length: int, rank: int) -> int:
        """Where process `rank`'s piece of a batch of `length` starts (sizes differ by at most one)."""
        return rank * (length // self.processes) + min(rank, length % self.processes)

    def share(self, step: int) -> float:
        """How much this process's piece of batch `step` weighs against the mean over processes:
        N * piece / batch (1.0 when the batch splits evenly)."""
        length = self._batch_lengths()[step]
        piece = self._piece(length, self.rank + 1) - self._piece(length, self.rank)
        return self.processes * piece / length
