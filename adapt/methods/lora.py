"""LoRA (Hu et al., 2022) through peft, on timm models.

peft injects its LoRA layers in place (`inject_adapter_in_model`), so the model keeps
its own class and forward. Targets by default: on a ViT the fused `qkv`, the attention
`proj`, and the MLP's `fc1`/`fc2`; on other networks every Linear and every ordinary
Conv2d (groups == 1; timm's dynamically padded Conv2dSame is left out because peft's
LoRA conv would not pad like it), always outside the head.

Merging folds W += (alpha / rank) * B @ A into each base layer with one in-place addmm
and puts the base layer back, so the merged model is the original architecture.

`qkv_blocks` ("q,v") adapts only those output row blocks of a ViT's fused qkv, as the LoRA paper's
q and v and V-PETL Bench's `linear_a_q/linear_b_q`, `linear_a_v/linear_b_v` do: peft cannot adapt part of
a layer's outputs, so these are SPT's row-block LoRA modules (spt.structured), without its drop-path.
`init="vpetl"` starts them as V-PETL Bench's released code does (models/vision_transformer_lora.py
L99-108): q's down and up both kaiming-uniform (the q branch starts non-zero), v's both zero (its branch
gets no gradient and never trains).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING

from torch import nn

from adapt.backbones import is_head_key
from adapt.config import option
from adapt.errors import AdaptError
from adapt.kernels import add_low_rank_
from adapt.methods.base import Method
from adapt.methods.mixins import plain_class, with_mixin

if TYPE_CHECKING:  # peft takes seconds to import; only LoRA runs need it
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

VIT_TARGETS = r"(^|\.)(qkv|proj|fc1|fc2)$"
ADAPTER = "default"
QKV_BLOCKS = ("q", "k", "v")  # the row blocks of a ViT's fused qkv, in order
INITS = ("lora", "vpetl")  # lora: down kaiming-uniform, up zeros; vpetl: V-PETL Bench's (module docstring)


def default_target(name: str, module: nn.Module, is_vit: bool) -> bool:
    if is_vit:
        return isinstance(module, nn.Linear) and re.search(VIT_TARGETS, name) is not None
    if isinstance(module, nn.Linear):
        return True
    return plain_class(module) is nn.Conv2d and module.groups == 1  # not timm's Conv2dSame, under any mixin


def lora_eligible_weights(model: nn.Module) -> set[str]:
    """Weights LoRA can adapt here: every Linear and plain Conv2d (groups 1) outside the head."""
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if name and not is_head_key(model, name) and default_target(name, module, is_vit=False)
    }


def target_layers(model: nn.Module, targets: str | None) -> list[str]:
    """The Linear/Conv2d layers outside the head that `targets` (a regex on names) picks; None: the
    defaults (module docstring). LoRA and peft's other tuners (adapt.methods.peft_tuners) share them."""
    is_vit = hasattr(model, "blocks") and hasattr(model, "patch_embed")
    pattern = re.compile(targets) if targets else None
    names = []
    for name, module in model.named_modules():
        if not name or is_head_key(model, name) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if pattern.search(name) if pattern else default_target(name, module, is_vit):
            names.append(name)
    return names


@dataclasses.dataclass
class LoRAConfig:
    rank: int = option(8, low=1, high=4096)
    alpha: float = option(8.0, low=0, low_open=True)  # scaling = alpha / rank, as in peft
    dropout: float = option(0.0, low=0, high=1, high_open=True)
    targets: str | None = option(None, regex=True)  # regex on layer names (Linear/Conv2d); None: the defaults above
    qkv_blocks: str | None = option(None, takes="some of q, k, v, comma-separated, such as q,v")  # None: the whole qkv
    init: str = option(INITS[0], choices=INITS)

    def __post_init__(self) -> None:
        blocks = self.blocks()
        if self.qkv_blocks is not None and (not blocks or any(b not in QKV_BLOCKS for b in blocks)):
            raise AdaptError(f"qkv_blocks {self.qkv_blocks!r} must name some of q, k, v (e.g. q,v)")
        if self.init != "lora" and not blocks:
            raise AdaptError(f"init {self.init!r} is for the qkv row blocks: give qkv_blocks (e.g. q,v)")

    def blocks(self) -> list[str]:
        """The qkv row blocks adapted on their own (qkv_blocks), in q, k, v order; [] for none."""
        named = {b.strip() for b in (self.qkv_blocks or "").split(",") if b.strip()}
        return [b for b in QKV_BLOCKS if b in named] + sorted(named - set(QKV_BLOCKS))


class LoRA(Method):
    name = "lora"
    summary = "low-rank updates B@A on qkv/proj/fc1/fc2 (ViT) or linear/1x1-conv layers, via peft"
    config_class = LoRAConfig
    mergeable = True
    default_lr = 1e-3
    default_weight_decay = 1e-4  # NOAH's and SPT's LoRA runs: B (a matrix) is not pulled to 0 by 0.05
    averages_exactly = False  # mean(B) mean(A) is not mean(B A): soups go through the folded weights

    def __init__(self, config: LoRAConfig | None = None):
        super().__init__(config)
        self.targets: list[str] = []  # layers peft adapts
        self.sliced: list[str] = []  # fused qkv layers whose row blocks (qkv_blocks) are adapted on their own

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        return LoraConfig(
            r=self.config.rank,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=list(self.targets),
        )

    def add_trainable(self, model: nn.Module) -> None:
        from peft import inject_adapter_in_model

        targets = target_layers(model, self.config.targets)
        if not targets:
            raise AdaptError(f"LoRA found no target layers in {type(model).__name__} (targets={self.config.targets!r})")
        if self.config.blocks():
            self.sliced = [name for name in targets if re.search(r"(^|\.)qkv$", name)]
            if not self.sliced:
                raise AdaptError(f"qkv_blocks needs a ViT's fused qkv among the targets; {type(model).__name__} has none")
            for name in self.sliced:
                self._add_row_blocks(model.get_submodule(name))
        self.targets = [name for name in targets if name not in self.sliced]
        if self.targets:
            inject_adapter_in_model(self.peft_config(), model, adapter_name=ADAPTER)

    def _add_row_blocks(self, layer: nn.Linear) -> None:
        """LoRA on the chosen q/k/v row blocks of a fused qkv (spt.structured's row-block modules)."""
        from adapt.methods.spt.structured import StructuredDelta, WithStructured

        size = layer.out_features // 3
        layer.structured = nn.ModuleDict({
            block: StructuredDelta(layer, (i * size, (i + 1) * size), "lora", self.config.rank, self.config.alpha,
                                   drop_path=0.0)
            for i, block in enumerate(QKV_BLOCKS) if block in self.config.blocks()
        })  # fmt: skip
        layer.structured_dropout = self.config.dropout
        if self.config.init == "vpetl":
            for block, module in layer.structured.items():
                for part in (module.down, module.up):
                    if block == "q":
                        nn.init.kaiming_uniform_(part.weight, a=math.sqrt(5))
                    else:
                        nn.init.zeros_(part.weight)
        with_mixin(layer, WithStructured)

    def report(self) -> str:
        parts = [f"{len(self.targets)} layers"] if self.targets else []
        parts += [f"{'+'.join(self.config.blocks())} of {len(self.sliced)} fused qkv"] if self.sliced else []
        return f"LoRA rank {self.config.rank} on {' and '.join(parts)}"

    def fold(self, model: nn.Module) -> nn.Module:
        from peft.tuners.lora import LoraLayer

        from adapt.methods.spt.structured import fold_structured_

        for name in self.sliced:
            fold_structured_(model.get_submodule(name))
        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                fold_lora_(module)
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
        return model


def fold_lora_(layer: LoraLayer) -> None:
    """W += scaling * B @ A in place on the base layer's weight (Linear or Conv2d)."""
    base = layer.get_base_layer()
    a = layer.lora_A[ADAPTER].weight
    b = layer.lora_B[ADAPTER].weight
    add_low_rank_(base.weight.data, b.detach().flatten(1), a.detach().flatten(1), layer.scaling[ADAPTER])
