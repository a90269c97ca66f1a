"""HST: Hierarchical Side-Tuning (Lin et al. 2023), in two variants.

The backbone's weights stay frozen (the paper variant tunes a ViT's LayerNorms); a side
network reads its intermediate features and builds a four-level pyramid (strides 4..32)
from which a head predicts.

- `variant=paper` (default), the official design (AFeng-x/HST): on a ViT, one meta token per
  block joins the block's sequence (a deep prompt that changes the patch tokens), the
  blocks' norm1/norm2 train, and the side network (paper.py) has shared per-stage bridges,
  cross-attention with q/k/v/proj to [meta token, global token], the resized bridged patch
  map added to every block (fine-grained features), MLP ratio 4, heads 2/4/8/12 and a
  BatchNorm head. Gradients flow through the whole ViT, so training memory is close to
  full fine-tuning's activations (without its weight gradients and optimizer state).
- `variant=light`: 12 one-way meta tokens per side block (the ViT's own forward is
  unchanged and runs under no_grad), one bridge per side block, head dim 8, convolutional
  feed-forward (light.py). Cheaper in training memory; pick it when memory is the limit.
On hierarchical/CNN backbones both variants read timm's feature maps (taps.py), without
meta tokens, with their own side network's blocks. HST adds a branch, so it is not mergeable.
"""

from __future__ import annotations

import dataclasses
import json

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adapt.config import option
from adapt.errors import AdaptError
from adapt.methods.base import Method
from adapt.methods.hst.light import HEAD_DIM, LightSideNetwork
from adapt.methods.hst.paper import PAPER_HEADS, PAPER_MLP_RATIO, PaperSideNetwork
from adapt.methods.hst.taps import FeatureMapTap, OneWayViTTap, PromptedViTTap
from adapt.methods.lean import keep_frozen_layers_lean
from adapt.methods.norms import freeze_norm_statistics

VARIANTS = ("paper", "light")
LEGACY_OPTIONS = {"widths", "depths", "meta_tokens", "mlp_ratio"}  # a checkpoint's options before the paper variant
MAX_CONTEXT_SIDE = 14  # the light variant pools CNN maps to at most 14 x 14 tokens, a ViT-B/16's count
DEFAULTS = {"paper": {"meta_tokens": 1, "mlp_ratio": PAPER_MLP_RATIO, "heads": PAPER_HEADS},
            "light": {"meta_tokens": 12, "mlp_ratio": 1.0, "heads": None}}  # fmt: skip


@dataclasses.dataclass
class HSTConfig:
    variant: str = option("paper", choices=VARIANTS)
    widths: tuple[int, ...] = (32, 48, 64, 72)
    depths: tuple[int, ...] = (3, 3, 3, 3)
    meta_tokens: int | None = option(None, low=0, high=1024)  # per ViT block; None: 1 (paper), 12 (light)
    mlp_ratio: float | None = option(None, low=0, low_open=True, high=64)  # None: 4 (paper), 1 (light)
    heads: tuple[int, ...] | None = None  # paper: per stage (None: 2, 4, 8, 12); light: width / 8
    # the paper side network's stochastic depth (its last block's; linear from 0); None: the backbone's own rate
    # (the run's --drop-path), as the official model gives both one drop_path_rate
    side_drop_path: float | None = option(None, low=0, high=1, high_open=True)

    def __post_init__(self) -> None:
        self.widths, self.depths = _four_integers(self.widths, "widths"), _four_integers(self.depths, "depths")
        if self.heads is not None:
            self.heads = _four_integers(self.heads, "heads")
        for key, value in DEFAULTS.get(self.variant, {}).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if any(w <= 0 for w in self.widths) or any(d <= 0 for d in self.depths):
            raise AdaptError(f"hst widths and depths must be positive: {self.widths}, {self.depths}")
        if self.variant == "light" and any(w % HEAD_DIM for w in self.widths):
            raise AdaptError(f"hst light widths must be multiples of {HEAD_DIM}: {self.widths}")
        if self.variant == "paper" and any(h <= 0 or w % h for w, h in zip(self.widths, self.heads)):
            raise AdaptError(f"hst widths must be multiples of their stage's heads: widths {self.widths}, heads {self.heads}")


def _four_integers(value: object, name: str) -> tuple[int, ...]:
    """Four integers, as given in Python (a sequence) or on the command line ("32,48,64,72")."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    try:
        numbers = tuple(int(v) for v in (items if isinstance(items, (list, tuple)) else [items]))
    except (TypeError, ValueError):
        raise AdaptError(f"hst {name} are 4 integers, got {value!r}") from None
    if len(numbers) != 4:
        raise AdaptError(f"hst needs 4 {name}, got {numbers}")
    return numbers


class HSTModel(nn.Module):
    """A frozen backbone, a tap that reads it, and the side network that predicts."""

    def __init__(self, backbone: nn.Module, config: HSTConfig, num_classes: int, drop_path: float = 0.0):
        super().__init__()
        self.backbone = backbone
        paper, vit = config.variant == "paper", isinstance(backbone, VisionTransformer)
        side_blocks = sum(config.depths)
        if vit:
            tap_class = PromptedViTTap if paper else OneWayViTTap
            self.tap = tap_class(backbone, side_blocks, config.meta_tokens)
        else:
            self.tap = FeatureMapTap(backbone, config.depths, None if paper else MAX_CONTEXT_SIDE)
        if paper:
            self.side = PaperSideNetwork(config.widths, config.depths, config.heads, self.tap.context_dims, vit,
                                         config.mlp_ratio, num_classes, drop_path)  # fmt: skip
        else:
            self.side = LightSideNetwork(config.widths, config.depths, self.tap.context_dims, config.mlp_ratio, num_classes)

    @property
    def variant(self) -> str:
        return {PromptedViTTap: "ViT: a meta token in every block, tuned LayerNorms, shared stage bridges",
                OneWayViTTap: "ViT: one-way meta tokens, a bridge per side block",
                FeatureMapTap: "feature maps: resized bridged maps, no meta tokens"}[type(self.tap)]  # fmt: skip

    def side_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid for dense tasks: four maps (B, width_k, ceil(H/s), ceil(W/s)) at s = 4, 8, 16, 32."""
        return self.side.pyramid(image, self.tap(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.side(image, self.tap(image))


def stochastic_depth(model: nn.Module) -> float:
    """A timm backbone's drop_path_rate, read back from its blocks: the largest DropPath rate in it (timm
    raises the rate linearly to it over the blocks)."""
    from timm.layers import DropPath

    return max((m.drop_prob for m in model.modules() if isinstance(m, DropPath)), default=0.0)


class HST(Method):
    name = "hst"
    summary = "side network reading the frozen backbone through meta tokens, multi-scale features (Lin et al. 2023)"
    config_class = HSTConfig
    default_lr = 2e-3
    merge_refusal = "its side network is a second branch beside the backbone, not a change to the backbone's weights"
    grad_checkpointing_refusal = ("its taps run the backbone themselves (block by block, or timm's "
                                  "forward_intermediates), outside timm's checkpointed forward")

    @classmethod
    def from_options(cls, options: dict) -> Method:
        """Checkpoints written before the paper variant existed hold the light one: their options are
        exactly these four keys (every checkpoint since records `variant` and `heads` too)."""
        if set(options) == LEGACY_OPTIONS:
            options = {**options, "variant": "light"}
        return super().from_options(options)

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze the backbone, drop its unused classifier, and wrap it with a fresh side network
        (the paper variant's tap unfreezes a ViT's block LayerNorms)."""
        num_classes = model.num_classes
        model.requires_grad_(False)
        freeze_norm_statistics(model)
        keep_frozen_layers_lean(model)
        model.reset_classifier(0)
        side_drop_path = self.config.side_drop_path
        return HSTModel(model, self.config, num_classes,
                        stochastic_depth(model) if side_drop_path is None else side_drop_path)  # fmt: skip

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained parameters and the side network's BatchNorm statistics (the paper variant's
        stem and head), which training moves too and the predictions depend on."""
        buffers = {f"side.{key}": buffer.detach() for key, buffer in model.side.named_buffers()}
        return {**super().trainable_state(model), **buffers}

    def describe(self, model: nn.Module) -> str:
        return f"{self.summary}; here: {model.variant}"

    def report(self) -> str:
        return f"{self.config.variant} variant, side network widths {list(self.config.widths)}, depths {list(self.config.depths)}"

    def options_line(self) -> str:
        tuned = "; on a ViT it also tunes every block's norm1 and norm2" if self.config.variant == "paper" else ""
        return f"{self.name} {json.dumps(self.options())}{tuned}"
