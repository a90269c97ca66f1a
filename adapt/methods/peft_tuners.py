"""peft's other tuners on timm models: DoRA, LoHa, LoKr, (IA)³, OFT, BOFT and VeRA.

Each is peft's own layer (no copy here): we choose the target layers, peft injects its layers in
place (`inject_adapter_in_model`), trains them, and merges them with its own `merge()` (what
`merge_and_unload` calls), after which the base layer is put back, so the merged model is the original
architecture. Each tuner's peft options are its `--option KEY=VALUE`s, with peft's defaults.

Targets, as LoRA's (adapt.methods.lora): on a ViT the fused `qkv`, `proj`, `fc1`, `fc2`; on other
networks every Linear and ordinary Conv2d outside the head. Where a tuner cannot take a layer
(VeRA: Linear only in peft; OFT and BOFT: a block size that must divide the layer's inputs)
that layer is left out and `report()` says how many were.

Papers: DoRA (Liu et al. 2024, peft `use_dora`), LoHa (Hyeon-Woo et al. 2022, FedPara), LoKr (Yeh et al.
2024, LyCORIS), (IA)³ (Liu et al. 2022), OFT (Qiu et al. 2023), BOFT (Liu et al. 2024), VeRA (Kopiczko
et al. 2024).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from adapt.config import option
from adapt.errors import AdaptError
from adapt.methods.base import Method
from adapt.methods.lora import ADAPTER, target_layers

if TYPE_CHECKING:
    from peft.config import PeftConfig


class PeftTuner(Method):
    """A method whose layers are peft's: `peft_class` names its peft config, `peft_options()` fills it."""

    peft_class: ClassVar[str]  # the peft config class, e.g. "LoHaConfig"
    mergeable = True
    averages_exactly = False  # the merged update is not linear in the trained tensors
    default_weight_decay = 1e-4  # as LoRA's: the low-rank or multiplicative factors are not pulled to 0 by 0.05
    linear_only: ClassVar[bool] = False  # peft has this tuner for nn.Linear only

    def __init__(self, config: Any | None = None):
        super().__init__(config)
        self.targets: list[str] = []
        self.left_out: list[str] = []  # eligible layers this tuner cannot take (why: `fits`)

    def peft_options(self) -> dict[str, Any]:
        """The peft config's keyword arguments besides the targets (the options under peft's names)."""
        return {k: v for k, v in self.options().items() if k != "targets"}

    def fits(self, layer: nn.Module) -> bool:
        """Whether peft's layer can take this one (most tuners: any Linear or Conv2d we target)."""
        return isinstance(layer, nn.Linear) or not self.linear_only

    def peft_config(self) -> PeftConfig:
        import peft

        return getattr(peft, self.peft_class)(target_modules=list(self.targets), **self.peft_options())

    def add_trainable(self, model: nn.Module) -> None:
        eligible = target_layers(model, self.config.targets)
        self.targets = [name for name in eligible if self.fits(model.get_submodule(name))]
        self.left_out = [name for name in eligible if name not in self.targets]
        if not self.targets:
            kinds = "Linear layers" if self.linear_only else "Linear or Conv2d layers it can take"
            raise AdaptError(f"{self.name} found no target in {type(model).__name__}: peft's {self.name} adapts "
                             f"{kinds}, and there are none outside the head (targets={self.config.targets!r})")  # fmt: skip
        with warnings.catch_warnings():  # BOFT's: no CUDA extension to build on a CPU (it then runs in Python)
            warnings.simplefilter("ignore")
            self.inject(model)

    def inject(self, model: nn.Module) -> None:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(self.peft_config(), model, adapter_name=ADAPTER)

    def report(self) -> str:
        skipped = f" ({len(self.left_out)} left out: {self.left_out_reason()})" if self.left_out else ""
        return f"{self.name} (peft) on {len(self.targets)} layers{skipped}"

    def left_out_reason(self) -> str:
        return "Linear layers only" if self.linear_only else "their inputs do not fit the block size"

    def fold(self, model: nn.Module) -> nn.Module:
        """peft's own merge of each injected layer, then the base layer back in its place."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge(adapter_names=[ADAPTER])
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
        return model


def _inputs(layer: nn.Module) -> int:
    """The inputs a layer's weight mixes (a conv's: channels per group x kernel area), as peft's OFT counts them."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] // layer.groups
    return layer.in_features


@dataclasses.dataclass
class DoRAConfig:
    rank: int = option(8, low=1, high=4096)
    alpha: float = option(8.0, low=0, low_open=True)  # scaling = alpha / rank, as in peft
    dropout: float = option(0.0, low=0, high=1, high_open=True)
    targets: str | None = option(None, regex=True)


class DoRA(PeftTuner):
    name = "dora"
    summary = "weight-decomposed LoRA: a trained magnitude per output and a LoRA direction, via peft (use_dora)"
    config_class = DoRAConfig
    peft_class = "LoraConfig"
    default_lr = 1e-3

    def peft_options(self) -> dict[str, Any]:
        c = self.config
        return {"r": c.rank, "lora_alpha": c.alpha, "lora_dropout": c.dropout, "use_dora": True}


@dataclasses.dataclass
class LoHaConfig:
    r: int = option(8, low=1, high=4096)
    alpha: float = option(8.0, low=0, low_open=True)
    rank_dropout: float = option(0.0, low=0, high=1, high_open=True)
    module_dropout: float = option(0.0, low=0, high=1, high_open=True)
    targets: str | None = option(None, regex=True)


class LoHa(PeftTuner):
    name = "loha"
    summary = "low-rank Hadamard product update (B1 A1) * (B2 A2), via peft"
    config_class = LoHaConfig
    peft_class = "LoHaConfig"


@dataclasses.dataclass
class LoKrConfig(LoHaConfig):  # peft's LoKr takes LoHa's options and two of its own
    decompose_both: bool = False
    decompose_factor: int = option(-1, low=-1)


class LoKr(PeftTuner):
    name = "lokr"
    summary = "low-rank Kronecker product update W1 (x) (B A), via peft"
    config_class = LoKrConfig
    peft_class = "LoKrConfig"


@dataclasses.dataclass
class IA3Config:
    targets: str | None = option(None, regex=True)
    # layers whose inputs are scaled (the paper's FFN activations); the others' outputs are. None: a ViT's fc2
    feedforward: str | None = option(None, regex=True)


class IA3(PeftTuner):
    name = "ia3"
    summary = "learned rescaling vectors on layer outputs (FFN inputs on fc2), via peft"
    config_class = IA3Config
    peft_class = "IA3Config"
    default_lr = 3e-3
    default_weight_decay = 0.0  # its vectors start at 1: decay would pull them to 0
    averages_exactly = True  # W * l is linear in l: a mean of the vectors is the mean of the merged weights

    def peft_options(self) -> dict[str, Any]:
        import re

        pattern = re.compile(self.config.feedforward or r"(^|\.)fc2$")
        return {"feedforward_modules": [name for name in self.targets if pattern.search(name)]}


@dataclasses.dataclass
class OFTConfig:
    oft_block_size: int = option(32, low=1)
    module_dropout: float = option(0.0, low=0, high=1, high_open=True)
    coft: bool = False
    eps: float = option(6e-5, low=0, low_open=True)
    block_share: bool = False
    targets: str | None = option(None, regex=True)


class BlockRotation(PeftTuner):
    """OFT and BOFT rotate a layer's inputs in blocks: a layer whose inputs the block size does not divide is left out."""

    block_size_option: ClassVar[str]

    def fits(self, layer: nn.Module) -> bool:
        return _inputs(layer) % getattr(self.config, self.block_size_option) == 0


class OFT(BlockRotation):
    name = "oft"
    summary = "orthogonal block-diagonal rotation of each weight's inputs, via peft"
    config_class = OFTConfig
    peft_class = "OFTConfig"
    block_size_option = "oft_block_size"


@dataclasses.dataclass
class BOFTConfig:
    boft_block_size: int = option(4, low=1)
    boft_dropout: float = option(0.0, low=0, high=1, high_open=True)
    targets: str | None = option(None, regex=True)


class BOFT(BlockRotation):
    """peft's BOFT with one butterfly factor (its default): more factors need peft's CUDA extension, without which
    peft silently falls back to one, so a run's result would depend on whether that extension built."""

    name = "boft"
    summary = "butterfly-factorized orthogonal rotation of each weight's inputs, via peft"
    config_class = BOFTConfig
    peft_class = "BOFTConfig"
    block_size_option = "boft_block_size"


@dataclasses.dataclass
class VeRAConfig:
    r: int = option(256, low=1, high=65536)
    d_initial: float = option(0.1, low=0)
    vera_dropout: float = option(0.0, low=0, high=1, high_open=True)
    projection_prng_key: int = option(0, low=0)
    targets: str | None = option(None, regex=True)


class VeRA(PeftTuner):
    name = "vera"
    summary = "frozen shared random projections with trained scaling vectors, via peft"
    config_class = VeRAConfig
    peft_class = "VeraConfig"
    default_lr = 1e-2
    default_weight_decay = 0.0  # its vectors are few and start small: the paper trains them without decay
    linear_only = True

    def inject(self, model: nn.Module) -> None:
        """peft keeps VeRA's shared projections on its tuner, so `inject_adapter_in_model` refuses it; the tuner
        injects in place all the same, and each layer keeps a reference to the projections (saved with it)."""
        from peft.tuners.vera import VeraModel

        VeraModel(model, self.peft_config(), ADAPTER)
