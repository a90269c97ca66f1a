"""A residual block's last norm without an activation, whose scale trains, need not keep its output.

Its scale's gradient reads the output y (adapt.kernels.frozen_batchnorm), and y is also the
block's sum z = y + shortcut minus the shortcut. The block's input (the shortcut) and its sum are
what the layers around keep anyway wherever they train (a pointwise conv with LoRA, a structured
module or a sparse delta keeps its input; the next residual block keeps its own shortcut), so the
norm's node keeps neither y nor anything new: its saved y is replaced (torch's saved-tensor hooks)
by a note that the block fills in with (sum, shortcut) once it has added them, and backward
recovers y = sum - shortcut (equal to y to float32 rounding of the sum). On Lite0 under SPT these
outputs were 4.9 MB of its peak training memory over LoRA's.

The note goes in through torch's saved-tensor hooks rather than as an attribute of the node, so
it lives exactly as a saved tensor would: released once backward has passed the node (the graph
itself lives on while the loss does), kept for a second backward with retain_graph.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch


class OutputFromResidual:
    """Stands for a norm's saved output until the block hands over (sum, shortcut)."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._shortcut: torch.Tensor | None = None
        self._versions: tuple[int, int] = (0, 0)

    @contextmanager
    def saving_no_output(self, norm_input: torch.Tensor) -> Iterator[None]:
        """Within: the 4-D maps a node saves, other than its input, are this note instead."""
        kept_input = norm_input.untyped_storage().data_ptr()

        def pack(tensor: torch.Tensor):
            if tensor.dim() == 4 and tensor.untyped_storage().data_ptr() != kept_input:
                return self
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, self._unpack):
            yield

    def fill(self, block_sum: torch.Tensor, shortcut: torch.Tensor) -> None:
        self._sum, self._shortcut = block_sum, shortcut
        self._versions = (block_sum._version, shortcut._version)

    def _unpack(self, packed):
        if packed is not self:
            return packed
        if self._sum is None:
            raise RuntimeError("a residual norm's output was needed before its block finished its forward")
        if (self._sum._version, self._shortcut._version) != self._versions:
            raise RuntimeError("a residual block's sum or input was modified in place after its forward; "
                               "its last norm's gradient cannot be computed")  # fmt: skip
        return self._sum - self._shortcut
