"""SPT: sensitivity-aware parameter-efficient tuning (He et al., ICCV 2023).

An `Allocation` (adapt.allocation) says where the budget goes: LoRA on the matrices with
many sensitive entries, a sparse delta on exactly the selected entries of the others,
and whole bias/norm vectors where >= 20% of them are sensitive. With
structured_module="adapter", bottleneck adapters (adapt.methods.adapter) replace LoRA; such
a model cannot be merged.

The sparse delta is a parametrization W_eff = W + scatter(values at flat indices): it
stores and trains only `values` (with their optimizer state) and an index buffer, so its
memory is proportional to the selected entries; W itself stays frozen and bitwise
unchanged. Merging adds the values into W in place (index_add_) and folds the LoRA parts
as the lora method does.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from adapt.allocation import Allocation
from adapt.config import option
from adapt.errors import AdaptError
from adapt.methods.adapter import BottleneckAdapter
from adapt.methods.base import Method
from adapt.methods.lora import LoRA, LoRAConfig


class SparseDelta(nn.Module):
    """Parametrization: the weight plus trainable values at fixed flat indices."""

    def __init__(self, count: int):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(count))
        self.register_buffer("indices", torch.zeros(count, dtype=torch.long))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten().index_add(0, self.indices, self.values.to(weight.dtype)).view_as(weight)


@dataclasses.dataclass
class SPTConfig:
    rank: int = option(8, low=1, high=4096)
    alpha: float = option(8.0, low=0, low_open=True)
    structured: list[str] = dataclasses.field(default_factory=list)  # weight names that get the structured module
    structured_module: str = option("lora", choices=("lora", "adapter"))  # adapter: a bottleneck adapter; not mergeable
    unstructured: dict[str, int] = dataclasses.field(default_factory=dict)  # weight name -> selected count
    vectors: list[str] = dataclasses.field(default_factory=list)  # vectors that train whole


def _split(name: str) -> tuple[str, str]:
    module, _, leaf = name.rpartition(".")
    return module, leaf


def _has_parameter(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
    except AttributeError:
        return False
    return True


class SPT(Method):
    name = "spt"
    summary = "sensitivity-aware budget: LoRA where many weights matter, sparse deltas elsewhere (He et al. 2023)"
    config_class = SPTConfig
    mergeable = True
    default_lr = 1e-3
    budgeted = True
    averages_exactly = False  # runs may select other entries, and its LoRA parts are bilinear

    def __init__(self, config: SPTConfig | None = None):
        super().__init__(config)
        self.mergeable = self.config.structured_module == "lora" or not self.config.structured
        self.allocation: Allocation | None = None  # set for fresh runs; a checkpoint needs only its buffers
        self.lora = LoRA(LoRAConfig(rank=self.config.rank, alpha=self.config.alpha,
                                    targets="^(" + "|".join(_split(n)[0] for n in self.config.structured) + ")$"))  # fmt: skip

    @staticmethod
    def options_for(allocation: Allocation, alpha: float = 8.0) -> dict:
        """Method options that realise an allocation (its indices go in with `set_indices`)."""
        counts = {n: len(i) for n, i in allocation.unstructured.items()}
        config = SPTConfig(allocation.rank, alpha, list(allocation.structured), allocation.structured_module, counts,
                           list(allocation.vectors))  # fmt: skip
        return dataclasses.asdict(config)

    def set_allocation(self, model: nn.Module, allocation: Allocation) -> None:
        """Point each sparse delta at its selected entries (checkpoints carry them as buffers)."""
        self.allocation = allocation
        for name, flat in allocation.unstructured.items():
            module_name, leaf = _split(name)
            delta = model.get_submodule(module_name).parametrizations[leaf][0]
            delta.indices.copy_(torch.tensor(flat, dtype=torch.long))
        self._check_indices(model)

    def load_trainable_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        super().load_trainable_state(model, tensors, source)
        self._check_indices(model, source)

    def _check_indices(self, model: nn.Module, source: str = "the allocation") -> None:
        """Every sparse index must address an entry of its weight (else the forward pass would fail)."""
        for name in self.config.unstructured:
            module_name, leaf = _split(name)
            module = model.get_submodule(module_name)
            indices, size = module.parametrizations[leaf][0].indices, module.parametrizations[leaf].original.numel()
            if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= size):
                raise AdaptError(f"{source}: sparse indices of {name} fall outside its {size:,} entries")

    def add_trainable(self, model: nn.Module) -> None:
        try:
            self._add_trainable(model)
        except AttributeError:
            names = [*self.config.structured, *self.config.unstructured, *self.config.vectors]
            missing = next((n for n in names if not _has_parameter(model, n)), names[0] if names else "?")
            raise AdaptError(f"SPT allocation names {missing}, which this model does not have") from None

    def _add_trainable(self, model: nn.Module) -> None:
        if self.config.structured and self.config.structured_module == "lora":
            self.lora.add_trainable(model)
        for name in self.config.structured if self.config.structured_module == "adapter" else ():
            layer = model.get_submodule(_split(name)[0])
            layer.adapter = BottleneckAdapter(layer, self.config.rank)
            layer.register_forward_hook(layer.adapter.beside)
        for name in self.config.vectors:
            self._parameter(model, name).requires_grad_(True)
        for name, count in self.config.unstructured.items():
            module_name, leaf = _split(name)
            module = model.get_submodule(module_name)
            parametrize.register_parametrization(module, leaf, SparseDelta(count), unsafe=True)

    @staticmethod
    def _parameter(model: nn.Module, name: str) -> nn.Parameter:
        """A backbone parameter by its plain name, also when peft moved it into `base_layer`."""
        module_name, leaf = _split(name)
        for candidate in (name, f"{module_name}.base_layer.{leaf}"):
            try:
                return model.get_parameter(candidate)
            except AttributeError:
                continue
        raise AdaptError(f"SPT allocation names {name}, which this model does not have")

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = super().trainable_state(model)
        state.update({k: b for k, b in model.named_buffers() if k.endswith(".indices") and "parametrizations." in k})
        return state

    def report(self) -> str:
        sparse = sum(self.config.unstructured.values())
        kind = "LoRA" if self.config.structured_module == "lora" else "adapters"
        return (f"SPT: {kind} rank {self.config.rank} on {len(self.config.structured)} matrices, sparse deltas of "
                f"{sparse:,} entries in {len(self.config.unstructured)}, {len(self.config.vectors)} whole vectors")  # fmt: skip

    def merge(self, model: nn.Module) -> nn.Module:
        if not self.mergeable:
            raise AdaptError("SPT with adapters cannot be merged: a bottleneck adapter is non-linear (use lora)")
        for name in self.config.unstructured:
            module_name, leaf = _split(name)
            module = model.get_submodule(module_name)
            delta = module.parametrizations[leaf][0]
            with torch.no_grad():
                weight = module.parametrizations[leaf].original
                weight.view(-1).index_add_(0, delta.indices, delta.values.to(weight.dtype))
            parametrize.remove_parametrizations(module, leaf, leave_parametrized=False)
        if self.config.structured:
            self.lora.merge(model)
        return model
