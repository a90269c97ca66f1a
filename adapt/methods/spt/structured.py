"""SPT's structured part: a LoRA or an adapter on a frozen Linear/Conv2d, or on a block of its
output rows (q, k or v of a ViT's fused qkv, which the paper treats as three matrices).

As in the released code (ziplab/SPT model/vision_transformer_timm.py): LoRA is down (kaiming)
then up (zeros), no bias, **parallel**: it sees the layer's input and adds to its output
(BlockSPTParallel). The adapter is down -> GELU -> up with biases (up and its bias start at
zero) and, by default, **sequential** (BlockSPTSeq): it acts on the layer's output rows,
x -> x + up(GELU(down(x))), so on fc1 it maps fc1's 3072-wide output before the GELU; its
cost is then exactly the paper's formula 2 * rows * r + r + rows. On a CNN the sequential
adapter's down and up are 1x1 convs on the conv's output. `parallel` (our earlier form: the
adapter on the layer's input) is kept as a named option, costed as built,
r * (rows + cols) + r + rows. A ViT's attention output projection is parallel in both forms
and sees its input undropped, as the official `proj` does.

The module's output goes through DropPath and its input through Dropout (0.1 each by
default). Parallel modules of one layer share one dropout mask on its input (the official
`x_drop` for q, k and v); a sequential module drops its own rows (the official code calls
`structured_drop` on q, k and v separately). Both start as the unchanged layer. LoRA folds
into the weight (W[rows] += scaling * up @ down); the adapter's GELU makes it non-linear,
so a model with adapters cannot be merged.

Dropout on a CNN's full-resolution maps is what SPT's training time and memory went to
(benchmarks/results/spt_digits.md), so it is done cheaply and exactly as inverted dropout:
the mask is drawn as 16 random bits per entry (four per int64 draw: several times faster than
torch's Bernoulli on CPU), and the dropped input is recomputed in the backward pass from the
saved RNG state (torch.utils.checkpoint) instead of being kept, so the modules keep no
activation beyond the layer input the frozen layer keeps anyway.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from adapt.kernels import add_low_rank_
from adapt.methods.mixins import plain_class, without_mixin

KINDS = ("lora", "adapter")
ADAPTER_FORMS = ("sequential", "parallel")  # sequential: the official BlockSPTSeq
UNDROPPED = ("attn.proj",)  # parallel in every form, input undropped (the official ViT's proj)
MASK_LEVELS = 1 << 16  # dropout's probability is a multiple of 1 / MASK_LEVELS


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout (as nn.Dropout in training) with the mask from 16 random bits per entry;
    p is rounded to a multiple of 1/65536 (0.1 -> 0.100006) and the kept entries scaled to match."""
    if x.device.type != "cpu":  # the bit trick is a CPU speed-up; elsewhere torch's own is fast
        return F.dropout(x, p, training=True)
    dropped = min(round(p * MASK_LEVELS), MASK_LEVELS - 1)  # p < 1: something is kept
    count = x.numel()
    bits = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:count]
    keep = bits.view(x.shape) >= dropped - MASK_LEVELS // 2
    return torch.where(keep, x, 0.0).mul_(MASK_LEVELS / (MASK_LEVELS - dropped))


def is_sequential(layer_name: str, kind: str, adapter_form: str) -> bool:
    """Whether the structured module on this layer acts on its output (module docstring)."""
    return kind == "adapter" and adapter_form == "sequential" and not layer_name.endswith(UNDROPPED)


def structured_cost(shape: tuple[int, ...], rank: int, kind: str, sequential: bool = True) -> int:
    """Parameters of the structured module on a weight of this shape (rows = outputs), as built."""
    rows, cols = shape[0], math.prod(shape[1:])
    if kind == "lora":
        return rank * (rows + cols)
    return 2 * rows * rank + rank + rows if sequential else rank * (rows + cols) + rank + rows


class StructuredDelta(nn.Module):
    """The structured module for output rows [start, stop) of `layer` (all rows: the whole layer);
    its input dropout belongs to the layer (WithStructured), which feeds it `down`'s output.
    sequential (adapters): it maps those output rows rather than the layer's input."""

    def __init__(self, layer: nn.Module, rows: tuple[int, int], kind: str, rank: int, alpha: float | None,
                 drop_path: float = 0.1, sequential: bool = False):  # fmt: skip
        super().__init__()
        self.rows, self.kind, self.sequential = rows, kind, sequential
        adapter = kind == "adapter"
        outputs = rows[1] - rows[0]
        if sequential and isinstance(layer, (nn.Linear, nn.Conv2d)):  # on the output: rows -> r -> rows
            linear = isinstance(layer, nn.Linear)
            self.down = nn.Linear(outputs, rank) if linear else nn.Conv2d(outputs, rank, 1)
            self.up = nn.Linear(rank, outputs) if linear else nn.Conv2d(rank, outputs, 1)
        elif isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=adapter)
            self.up = nn.Linear(rank, outputs, bias=adapter)
        elif isinstance(layer, nn.Conv2d) and layer.groups == 1:  # down sees the input as the layer does
            self.down = plain_class(layer)(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                                           layer.dilation, bias=adapter)  # fmt: skip
            self.up = nn.Conv2d(rank, outputs, 1, bias=adapter)
        else:
            raise TypeError(f"no structured module for {type(layer).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        if adapter:
            nn.init.zeros_(self.up.bias)
        self.act = nn.GELU() if adapter else nn.Identity()
        self.scaling = 1.0 if adapter or alpha is None else alpha / rank  # None: unscaled, as the official LoRA
        self.drop_path = DropPath(drop_path)

    def forward(self, down: torch.Tensor) -> torch.Tensor:
        """The module's output from its down projection's output. LoRA's `up` is linear without a
        bias, so its scaling and per-sample DropPath go on the rank-r input (the same product,
        on r channels instead of the output's many)."""
        if self.kind == "lora":
            return self.up(self.drop_path(down * self.scaling))
        return self.drop_path(self.up(self.act(down)))  # an adapter's scaling is 1

    def fold_into(self, weight: torch.Tensor) -> None:
        """W[rows] += scaling * up @ down, in place (LoRA only)."""
        if self.kind != "lora":
            raise ValueError("an adapter is non-linear and cannot be folded into a weight")
        start, stop = self.rows
        with torch.no_grad():
            add_low_rank_(weight[start:stop], self.up.weight.flatten(1), self.down.weight.flatten(1), self.scaling)


def _dropped_downs(x: torch.Tensor, p: float, *modules: StructuredDelta) -> tuple[torch.Tensor, ...]:
    dropped = dropout(x, p)
    return tuple(module.down(dropped) for module in modules)


class WithStructured:
    """Mixin over a Linear/Conv2d: its output plus each structured module's, in that module's rows.
    Parallel modules share one dropout mask on the input (`structured_dropout`); sequential ones each
    drop their own rows of the output."""

    structured: nn.ModuleDict
    structured_dropout: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        modules = list(self.structured.values())
        if modules[0].sequential:  # a layer's modules share one form (SPT.add_trainable)
            return self._add_sequential(out, modules)
        if self.training and self.structured_dropout > 0:  # recomputed in backward, not kept (module docstring)
            downs = checkpoint(_dropped_downs, x, self.structured_dropout, *modules, use_reentrant=False)
        else:
            downs = [module.down(x) for module in modules]
        channel = -1 if isinstance(self, nn.Linear) else 1
        for module, down in zip(modules, downs):  # in place: the layer's backward does not need `out`
            start, stop = module.rows
            rows = out if stop - start == out.shape[channel] else out.narrow(channel, start, stop - start)
            rows.add_(module(down))  # all rows: no view, so backward does not copy the whole gradient
        return out

    def _add_sequential(self, out: torch.Tensor, modules: list[StructuredDelta]) -> torch.Tensor:
        """out + each module's map of its own rows of `out` (a new tensor: `out` is the modules' input)."""
        channel = -1 if isinstance(self, nn.Linear) else 1
        deltas = []
        for module in modules:
            start, stop = module.rows
            rows = out if stop - start == out.shape[channel] else out.narrow(channel, start, stop - start)
            if self.training and self.structured_dropout > 0:
                (down,) = checkpoint(_dropped_downs, rows, self.structured_dropout, module, use_reentrant=False)
            else:
                down = module.down(rows)
            deltas.append(module(down))
        if len(modules) == 1 and modules[0].rows[1] - modules[0].rows[0] == out.shape[channel]:
            return out + deltas[0]
        result = out.clone()
        for module, delta in zip(modules, deltas):
            start, stop = module.rows
            result.narrow(channel, start, stop - start).add_(delta)
        return result


def fold_structured_(layer: nn.Module) -> None:
    """Fold a layer's structured LoRA modules into its weight, in place, and make it a plain layer again."""
    for module in layer.structured.values():
        module.fold_into(layer.weight)
    without_mixin(layer, WithStructured)
    del layer.structured, layer.structured_dropout
