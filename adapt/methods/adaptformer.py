"""AdaptFormer (Chen et al. 2022): a bottleneck adapter in parallel with each ViT block's MLP.

Official code: `ShoufaChen/AdaptFormer : models/adapter.py` (`Adapter`) and `models/custom_modules.py`
(`Block.forward`), with main_image.py's `tuning_config`: ffn_option "parallel", layer norm "none",
init "lora", scalar "0.1", `--ffn_num` 64. Each block computes, after its attention,
x + drop_path(mlp(norm2(x))) + 0.1 * up(dropout(relu(down(x)))), dropout 0.1 (`Block.__init__`);
the adapter is off the stochastic-depth path. Init "lora": down kaiming-uniform(a=sqrt(5)), up and both
biases zero, so training starts at the backbone.

The ReLU between the projections leaves nothing a weight could absorb: AdaptFormer does not merge.
It needs a transformer MLP block (ViT only); on a CNN, RepAdapter is the adapter that applies.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from adapt.config import option
from adapt.errors import AdaptError
from adapt.methods.base import Method
from adapt.methods.mixins import plain_class, with_mixin


@dataclasses.dataclass
class AdaptFormerConfig:
    bottleneck: int = option(64, low=1, high=65536)  # --ffn_num
    scale: float = option(0.1, low=0, low_open=True)  # ffn_adapter_scalar
    dropout: float = option(0.1, low=0, high=1, high_open=True)
    # "none" (the official run's ffn_adapter_layernorm_option); "in": a trained LayerNorm on the adapter's input,
    # as V-PETL Bench's Adaptformer module defaults to (models/vision_transformer_adaptformer.py L196-203)
    layernorm: str = option("none", choices=("none", "in"))


class BottleneckAdapter(nn.Module):
    """scale * up(dropout(relu(down(x)))), started as the official "lora" init."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float, layernorm: str = "none"):
        super().__init__()
        self.scale = scale
        self.norm = nn.LayerNorm(dim) if layernorm == "in" else nn.Identity()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for tensor in (self.up.weight, self.down.bias, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(self.norm(x))))) * self.scale


class WithParallelAdapter:
    """Mixin over timm's ViT Block: its MLP branch gets the adapter beside it (custom_modules.Block.forward)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) + self.adaptmlp(x)


class AdaptFormer(Method):
    name = "adaptformer"
    summary = "bottleneck adapters in parallel with each MLP, scaled by 0.1 (ViT only; not mergeable)"
    config_class = AdaptFormerConfig
    default_lr = 1e-3
    default_weight_decay = 1e-4
    merge_refusal = "its adapters have a ReLU inside, which no weight of the backbone can absorb"

    def add_trainable(self, model: nn.Module) -> None:
        from timm.models.vision_transformer import Block

        blocks = [m for m in model.modules() if plain_class(m) is Block] if hasattr(model, "blocks") else []
        if not blocks:
            raise AdaptError(f"adaptformer adapts the MLP of timm's ViT blocks; {type(model).__name__} has none (ViT "
                             "only; on a CNN, repadapter is the adapter that applies)")  # fmt: skip
        c = self.config
        for block in blocks:
            block.adaptmlp = BottleneckAdapter(block.norm2.normalized_shape[0], c.bottleneck, c.scale, c.dropout, c.layernorm)
            with_mixin(block, WithParallelAdapter)
        self.blocks = len(blocks)

    def report(self) -> str:
        return f"AdaptFormer: bottleneck {self.config.bottleneck}, scale {self.config.scale:g}, on {self.blocks} blocks"
