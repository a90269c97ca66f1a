"""HST: Hierarchical Side-Tuning (Lin et al. 2023).

The backbone stays frozen and unchanged; a light side network (side_network.py) reads
its intermediate features and builds a four-level pyramid from which a linear head
predicts. Two ways of reading the backbone ("taps"):

- ViT/DeiT (timm VisionTransformer): learnable meta tokens (default 12) join the
  tokens of every block that the side network reads. They attend to the block's patch
  tokens, but the patch tokens do not attend back (a one-way mask), so the patch path
  is exactly the frozen ViT's own forward and runs under `torch.no_grad`; only the meta
  tokens, a dozen rows per block, carry gradients through the frozen block weights.
  Side block j reads [meta tokens; all tokens] after ViT block ceil((j + 1) L / n) - 1
  (block j on a 12-block ViT with the default 12 side blocks).
- Hierarchical/CNN backbones: timm's feature maps at strides 4, 8, 16, 32
  (`forward_intermediates`, the maps of `features_only`), all under no_grad, average-
  pooled to at most 14 x 14 positions; the blocks of stage s read the map of stride
  4 * 2^s. There are no meta tokens.

HST adds a branch rather than changing weights, so it is not mergeable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from adapt.config import option
from adapt.errors import AdaptError
from adapt.methods.base import Method
from adapt.methods.norms import freeze_norm_statistics
from adapt.methods.side_network import HEAD_DIM, SideNetwork

PYRAMID_STRIDES = (4, 8, 16, 32)
MAX_CONTEXT_SIDE = 14  # CNN maps are pooled to at most 14 x 14 tokens, a ViT-B/16's count


@dataclasses.dataclass
class HSTConfig:
    widths: tuple[int, ...] = (32, 48, 64, 72)
    depths: tuple[int, ...] = (3, 3, 3, 3)
    meta_tokens: int = option(12, low=0, high=1024)  # per ViT block; ignored on CNN backbones
    mlp_ratio: float = option(1.0, low=0, low_open=True, high=64)

    def __post_init__(self) -> None:
        try:
            self.widths = tuple(int(w) for w in _as_list(self.widths))
            self.depths = tuple(int(d) for d in _as_list(self.depths))
        except (TypeError, ValueError):
            raise AdaptError(f"hst widths and depths are 4 integers each, got {self.widths!r} and {self.depths!r}") from None
        if len(self.widths) != 4 or len(self.depths) != 4:
            raise AdaptError(f"hst needs 4 widths and 4 depths, got {self.widths} and {self.depths}")
        if any(w <= 0 or w % HEAD_DIM for w in self.widths) or any(d <= 0 for d in self.depths):
            raise AdaptError(f"hst widths must be positive multiples of {HEAD_DIM} and depths positive: {self.widths}, {self.depths}")


def _as_list(value: object) -> list:
    """Widths/depths as given in Python (a sequence) or on the command line ("32,48,64,72")."""
    if isinstance(value, str):
        return [v for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, (list, tuple)) else [value]


@contextmanager
def captured_outputs(modules: list[nn.Module]) -> Iterator[list]:
    """Collect what each of `modules` returns during the `with` body (one slot each)."""
    slots: list = [None] * len(modules)

    def keeper(index: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            slots[index] = output

        return hook

    handles = [module.register_forward_hook(keeper(i)) for i, module in enumerate(modules)]
    try:
        yield slots
    finally:
        for handle in handles:
            handle.remove()


def meta_through_block(block: Block, meta: torch.Tensor, patch_qkv: torch.Tensor) -> torch.Tensor:
    """Meta tokens through a frozen ViT block, attending to themselves and to the block's
    tokens (whose qkv the block already computed), which do not attend back.

    Equal to the meta rows of `block(cat(meta, tokens), attn_mask)` with the tokens' rows
    masked off the meta columns (tested), at the cost of only the meta rows."""
    attn = block.attn
    batch, count, _ = meta.shape
    x = block.norm1(meta)
    q, k, v = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)
    patch_k, patch_v = patch_qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)[1:]
    q, k = attn.q_norm(q), attn.k_norm(torch.cat([k, patch_k], dim=2))
    mixed = F.scaled_dot_product_attention(q, k, torch.cat([v, patch_v], dim=2))
    mixed = attn.norm(mixed.transpose(1, 2).reshape(batch, count, attn.attn_dim))
    if getattr(attn, "gate", None) is not None:
        mixed = mixed * attn.gate(x).sigmoid()
    meta = meta + block.ls1(attn.proj(mixed))
    return meta + block.ls2(block.mlp(block.norm2(meta)))


class ViTTap(nn.Module):
    """Contexts from a frozen timm ViT: [meta tokens after block i; tokens after block i]."""

    def __init__(self, vit: VisionTransformer, side_blocks: int, meta_tokens: int):
        super().__init__()
        depth = len(vit.blocks)
        self.read_blocks = [-(-(j + 1) * depth // side_blocks) - 1 for j in range(side_blocks)]
        if not all(isinstance(vit.blocks[i], Block) for i in self.read_blocks):
            raise AdaptError("hst supports timm ViT/DeiT blocks (timm.models.vision_transformer.Block) only")
        self.meta_tokens = nn.Parameter(torch.empty(side_blocks, meta_tokens, vit.embed_dim).normal_(0, 0.02))
        self.context_dims = [vit.embed_dim] * side_blocks
        self.vit = [vit]  # in a list: the backbone is registered once, by HSTModel

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit[0]
        blocks = [vit.blocks[i] for i in self.read_blocks]
        indices = sorted(set(self.read_blocks))
        with torch.no_grad(), captured_outputs([b.attn.qkv for b in blocks]) as patch_qkvs:
            outputs = vit.forward_intermediates(image, indices=indices, return_prefix_tokens=True, output_fmt="NLC",
                                                intermediates_only=True)  # fmt: skip
        tokens = dict(zip(indices, (torch.cat([p, t], 1) if p is not None else t for t, p in outputs)))
        contexts = []
        for meta, block, index, patch_qkv in zip(self.meta_tokens, blocks, self.read_blocks, patch_qkvs):
            meta = meta_through_block(block, meta.expand(image.shape[0], -1, -1), patch_qkv)
            contexts.append(torch.cat([meta, tokens[index]], dim=1))
        return contexts


class FeatureMapTap(nn.Module):
    """Contexts from a frozen hierarchical backbone's feature maps at strides 4..32, as tokens."""

    def __init__(self, backbone: nn.Module, depths: tuple[int, ...]):
        super().__init__()
        info = getattr(backbone, "feature_info", None)
        if info is None or not hasattr(backbone, "forward_intermediates"):
            raise AdaptError(f"hst needs a ViT or a timm backbone with feature maps; {type(backbone).__name__} has neither")
        strides = [entry["reduction"] for entry in info]
        missing = [s for s in PYRAMID_STRIDES if s not in strides]
        if missing:
            raise AdaptError(f"hst needs feature maps at strides 4, 8, 16, 32; {type(backbone).__name__} has {strides}")
        self.levels = [strides.index(s) for s in PYRAMID_STRIDES]
        self.repeats = list(depths)
        self.context_dims = [info[i]["num_chs"] for i, d in zip(self.levels, depths) for _ in range(d)]
        self.backbone = [backbone]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            maps = self.backbone[0].forward_intermediates(image, indices=self.levels, intermediates_only=True)
        contexts = []
        for feature_map, repeat in zip(maps, self.repeats):
            side = (min(feature_map.shape[2], MAX_CONTEXT_SIDE), min(feature_map.shape[3], MAX_CONTEXT_SIDE))
            tokens = F.adaptive_avg_pool2d(feature_map, side).flatten(2).transpose(1, 2)
            contexts += [tokens] * repeat
        return contexts


class HSTModel(nn.Module):
    """A frozen backbone, a tap that reads it, and the side network that predicts."""

    def __init__(self, backbone: nn.Module, config: HSTConfig, num_classes: int):
        super().__init__()
        self.backbone = backbone
        if isinstance(backbone, VisionTransformer):
            self.tap = ViTTap(backbone, sum(config.depths), config.meta_tokens)
        else:
            self.tap = FeatureMapTap(backbone, config.depths)
        self.side = SideNetwork(config.widths, config.depths, self.tap.context_dims, config.mlp_ratio, num_classes)

    @property
    def variant(self) -> str:
        return "ViT: meta tokens + token bridges" if isinstance(self.tap, ViTTap) else "feature-map bridges (no meta tokens)"

    def side_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid for dense tasks: four maps (B, width_k, ceil(H/s), ceil(W/s)) at s = 4, 8, 16, 32."""
        return self.side.pyramid(image, self.tap(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.side(image, self.tap(image))


class HST(Method):
    name = "hst"
    summary = "side network with meta tokens reading the frozen backbone, multi-scale features (Lin et al. 2023)"
    config_class = HSTConfig
    default_lr = 2e-3
    merge_refusal = "its side network is a second branch beside the backbone, not a change to the backbone's weights"

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze the backbone, drop its unused classifier, and wrap it with a fresh side network."""
        num_classes = model.num_classes
        model.requires_grad_(False)
        freeze_norm_statistics(model)
        model.reset_classifier(0)
        return HSTModel(model, self.config, num_classes)

    def describe(self, model: nn.Module) -> str:
        return f"{self.summary}; here: {model.variant}"

    def report(self) -> str:
        return f"side network widths {list(self.config.widths)}, depths {list(self.config.depths)}"
