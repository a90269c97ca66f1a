"""VPT: Visual Prompt Tuning (Jia et al. 2022), deep and shallow.

Official code: `KMnP/vpt : src/models/vit_prompt/vit.py` (`PromptedTransformer`). Learned prompt
tokens go into a frozen ViT's sequence right after the class token (`incorporate_prompt`):
- VPT-Shallow: one set, inserted before the first block, carried through every block;
- VPT-Deep: the first block's set is inserted the same way, and before each later block the previous
  block's outputs at the prompt positions are replaced by that block's own set (`forward_deep_prompt`).
Prompts start uniform in +-sqrt(6 / (3 * patch_size**2 + dim)) (the "xavier" `val`), pass through
dropout (`MODEL.PROMPT.DROPOUT`; 0.1 in NOAH's VTAB runs, `--drop_rate_prompt=0.1`) each time they
enter, and the class token after the final norm feeds the head. The official model keeps the frozen
encoder in eval mode while training (`PromptedTransformer.train`), so its blocks run without
stochastic depth: so do ours, whatever the run's --drop-path, unless `encoder_drop_path` (NOAH's VPT runs
keep it).

The prompt positions are taken out again after the last block: with timm's class-token pooling
(and a per-token final norm) the head sees exactly what the official model gives it; with
average pooling it averages the image tokens only.

Prompts are extra tokens, which no weight of the backbone can absorb: VPT does not merge.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from adapt.config import option
from adapt.errors import AdaptError
from adapt.methods.base import Method
from adapt.methods.mixins import with_mixin


@dataclasses.dataclass
class VPTConfig:
    tokens: int = option(10, low=1, high=4096)  # prompt length (MODEL.PROMPT.NUM_TOKENS), per task in the presets
    dropout: float = option(0.1, low=0, high=1, high_open=True)  # MODEL.PROMPT.DROPOUT
    # False (VPT's code): the frozen encoder runs without stochastic depth; True: at the run's --drop-path (NOAH's runs)
    encoder_drop_path: bool = False


class WithPrompts:
    """Mixin over a timm ViT block: puts its prompts into the sequence before it runs (inserted after the
    prefix tokens, or replacing the previous block's), and takes them out after it where it is the last."""

    prompt: nn.Parameter | None
    prompt_dropout: nn.Dropout
    prompt_mode: str  # "insert", "replace" or "carry" (shallow: a later block leaves them as they are)
    prompt_count: int
    prefix_tokens: int  # the class (and register) tokens before them
    strips_prompts: bool

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        p, n = self.prefix_tokens, self.prompt_count
        if self.prompt_mode != "carry":
            prompts = self.prompt_dropout(self.prompt).expand(x.shape[0], -1, -1)
            rest = x[:, p + n :] if self.prompt_mode == "replace" else x[:, p:]
            x = torch.cat((x[:, :p], prompts.to(x.dtype), rest), dim=1)
        out = super().forward(x, *args, **kwargs)
        return torch.cat((out[:, :p], out[:, p + n :]), dim=1) if self.strips_prompts else out


def _check_vit(model: nn.Module, name: str) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
        raise AdaptError(f"{name} prompts a ViT's token sequence; {type(model).__name__} has no tokens (ViT only)")


class VPTDeep(Method):
    name = "vpt-deep"
    summary = "learned prompt tokens before every ViT block (ViT only; not mergeable)"
    config_class = VPTConfig
    deep = True
    default_lr = 1e-3
    default_weight_decay = 1e-4  # NOAH's VPT runs (WEIGHT_DECAY=0.0001)
    merge_refusal = "its prompts are extra tokens in the sequence, which no weight of the backbone can absorb"

    def add_trainable(self, model: nn.Module) -> None:
        _check_vit(model, self.name)
        dim, patch = model.embed_dim, model.patch_embed.patch_size
        bound = math.sqrt(6.0 / (3 * patch[0] * patch[1] + dim))
        last = len(model.blocks) - 1
        for i, block in enumerate(model.blocks):
            owns = i == 0 or self.deep
            block.prompt = nn.Parameter(torch.empty(self.config.tokens, dim).uniform_(-bound, bound)) if owns else None
            block.prompt_dropout = nn.Dropout(self.config.dropout)
            block.prompt_mode = "insert" if i == 0 else "replace" if self.deep else "carry"
            block.prompt_count, block.prefix_tokens = self.config.tokens, model.num_prefix_tokens
            block.strips_prompts = i == last
            for drop in ("drop_path1", "drop_path2"):  # the official encoder trains in eval mode (module docstring)
                if hasattr(block, drop) and not self.config.encoder_drop_path:
                    setattr(block, drop, nn.Identity())
            with_mixin(block, WithPrompts)

    def backbone_drop_path(self, model: nn.Module, requested: float) -> float:
        return requested if self.config.encoder_drop_path else 0.0

    def report(self) -> str:
        where = "before every block" if self.deep else "at the input"
        return f"{self.config.tokens} prompt tokens {where}"


class VPTShallow(VPTDeep):
    name = "vpt-shallow"
    summary = "learned prompt tokens at the ViT's input (ViT only; not mergeable)"
    deep = False
