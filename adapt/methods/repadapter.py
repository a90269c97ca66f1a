"""RepAdapter (Luo et al. 2023, "Towards Efficient Visual Adaption via Structural Re-parameterization").

Official code: `luogen1996/RepAdapter : repadapter.py`. A linear adapter sits in front of a frozen
layer: x -> x + s * (B (A x + a) + b), with A a dense down-projection (dim 8, xavier-uniform, bias 0),
B a grouped up-projection (2 groups, weights and bias 0, so training starts at the backbone) and
dropout 0.1 between them (`RepAdapter`). `repblock` puts one before each block's attention (on
`norm1`'s output, i.e. in front of `qkv`) and one before its MLP (in front of `fc1`); `repattn` only
the first (`set_RepAdapter`). The scale s is per task (configs/repblock/<task>.yaml).

Being linear, it folds into the layer after it (`set_RepWeight`, `reparameterize`, `sparse2dense`):
W' = W + s (W B) A and c' = c + s W (B a + b), with B made dense block-diagonal. `adapt merge` does that
in place, so the merged model is the backbone's own architecture at zero inference cost.

On CNNs (our variant; the paper's ConvNeXt adapter sits before a depthwise conv, where it does not
fold): one adapter in front of every 1x1 conv (groups 1, no padding), which folds the same way. Those
convs have no bias (a BatchNorm follows), so their adapters have none either (a and b): the fold then
adds no tensor, and the merged model is still the plain timm state dict.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn.functional as F
from torch import nn

from adapt.backbones import is_head_key
from adapt.config import option
from adapt.errors import AdaptError
from adapt.kernels import add_low_rank_
from adapt.methods.base import Method
from adapt.methods.mixins import plain_class, with_mixin, without_mixin

VARIANTS = ("repblock", "repattn")
VIT_TARGETS = {"repblock": r"(^|\.)(attn\.qkv|mlp\.fc1)$", "repattn": r"(^|\.)attn\.qkv$"}


@dataclasses.dataclass
class RepAdapterConfig:
    dim: int = option(8, low=1, high=4096)  # the bottleneck (--dim)
    groups: int = option(2, low=1)  # groups of the up-projection (conv_B)
    scale: float = option(1.0, low=0, low_open=True)  # s (--scale; per task in configs/repblock/<task>.yaml)
    dropout: float = option(0.1, low=0, high=1, high_open=True)
    variant: str = option(VARIANTS[0], choices=VARIANTS)
    targets: str | None = option(None, regex=True)  # None: the variant's layers on a ViT, every 1x1 conv elsewhere


class LinearAdapter(nn.Module):
    """x + s * (B (A x + a) + b) over the channels (the last axis of tokens, the first of a conv's maps)."""

    def __init__(self, channels: int, dim: int, groups: int, scale: float, dropout: float, bias: bool = True):
        super().__init__()
        if channels % groups or dim % groups:
            raise AdaptError(f"RepAdapter's {groups} groups must divide both its dim ({dim}) and the {channels} channels")
        self.groups, self.scale = groups, scale
        self.down = nn.Linear(channels, dim, bias=bias)
        self.up_weight = nn.Parameter(torch.zeros(channels, dim // groups))  # conv_B's weight, groups stacked on rows
        self.up_bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.down.weight)
        if bias:
            nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # (N, C, H, W): as 1x1 convs
            h = F.conv2d(x, self.down.weight[:, :, None, None], self.down.bias)
            up = F.conv2d(self.dropout(h), self.up_weight[:, :, None, None], self.up_bias, groups=self.groups)
            return x + self.scale * up
        h = self.dropout(self.down(x)).unflatten(-1, (self.groups, -1))
        up = torch.einsum("...gd,gcd->...gc", h, self.up_weight.unflatten(0, (self.groups, -1))).flatten(-2)
        return x + self.scale * (up if self.up_bias is None else up + self.up_bias)

    def dense_up(self) -> torch.Tensor:
        """B as a dense (channels, dim) block-diagonal matrix (sparse2dense)."""
        return torch.block_diag(*self.up_weight.unflatten(0, (self.groups, -1)))


class WithInputAdapter:
    """Mixin over a Linear or 1x1 Conv2d: its input goes through its `repadapter` first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.repadapter(x))


def fold_input_adapter_(layer: nn.Module) -> None:
    """W' = W + s (W B) A, c' = c + s W (B a + b), in place; then the layer is plain again."""
    adapter: LinearAdapter = layer.repadapter
    with torch.no_grad():
        weight = layer.weight.flatten(1)  # (out, in) for a Linear and a 1x1 conv alike
        up = adapter.dense_up().to(weight.dtype)
        if adapter.up_bias is not None:  # an adapter has biases exactly where its layer has one
            shift = up @ adapter.down.bias + adapter.up_bias
            layer.bias.add_(weight @ shift.to(weight.dtype), alpha=adapter.scale)  # before W changes
        add_low_rank_(layer.weight.data, weight @ up, adapter.down.weight.detach(), adapter.scale)
    del layer.repadapter
    without_mixin(layer, WithInputAdapter)


def _is_pointwise(module: nn.Module) -> bool:
    return (plain_class(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1
            and module.padding == (0, 0))  # fmt: skip


class RepAdapter(Method):
    name = "repadapter"
    summary = "linear adapters before qkv and fc1 (ViT) or each 1x1 conv, re-parameterized into them on merge"
    config_class = RepAdapterConfig
    mergeable = True
    default_lr = 1e-3
    default_weight_decay = 1e-4  # train.py --wd
    averages_exactly = False  # the folded update W B A is bilinear in the adapter's tensors

    def __init__(self, config: RepAdapterConfig | None = None):
        super().__init__(config)
        self.targets: list[str] = []

    def target_names(self, model: nn.Module) -> list[str]:
        is_vit = hasattr(model, "blocks") and hasattr(model, "patch_embed")
        pattern = self.config.targets or (VIT_TARGETS[self.config.variant] if is_vit else None)
        names = []
        for name, module in model.named_modules():
            if not name or is_head_key(model, name) or not (isinstance(module, nn.Linear) or _is_pointwise(module)):
                continue
            if re.search(pattern, name) if pattern else _is_pointwise(module):
                names.append(name)
        return names

    def add_trainable(self, model: nn.Module) -> None:
        self.targets = self.target_names(model)
        if not self.targets:
            raise AdaptError(f"RepAdapter found no layer to go before in {type(model).__name__} (it takes Linear "
                             f"layers and 1x1 convs without padding; targets={self.config.targets!r})")  # fmt: skip
        c = self.config
        for name in self.targets:
            layer = model.get_submodule(name)
            channels = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            layer.repadapter = LinearAdapter(channels, c.dim, c.groups, c.scale, c.dropout, bias=layer.bias is not None)
            with_mixin(layer, WithInputAdapter)

    def report(self) -> str:
        return f"RepAdapter ({self.config.variant}, dim {self.config.dim}, scale {self.config.scale:g}) before " \
               f"{len(self.targets)} layers"

    def fold(self, model: nn.Module) -> nn.Module:
        for name in self.targets:
            fold_input_adapter_(model.get_submodule(name))
        return model


def repadapter_count(channels: int, dim: int, groups: int, bias: bool = True) -> int:
    """Trained values of one adapter: A and a, then B (grouped) and b."""
    return channels * dim + channels * (dim // groups) + (dim + channels if bias else 0)

