"""SPT: sensitivity-aware parameter-efficient tuning (He et al., ICCV 2023).

SPT sets itself up from the task (`prepare`): it scores the backbone's weights on the training
data (spt.sensitivity) and spends its `budget` on them (spt.allocation), or reads a saved
allocation. A checkpoint carries the result in its options and buffers, so loading one needs
no data.

An allocation names what trains, under SPT's names (spt.ranking: a ViT's q, k and v are row
blocks of the fused qkv): a structured module (spt.structured: LoRA, or an adapter) on the
matrices with many sensitive entries, a sparse delta (spt.sparse) on exactly the selected
entries of everything else, and whole vectors (and a ViT's cls_token). Here each name is
realized on the tensor it belongs to: row blocks of one weight share its layer, and the
sparse entries of several blocks form one delta. The frozen weights stay bitwise unchanged;
merging adds the deltas and folds LoRA into them (an adapter cannot be merged).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from adapt.config import option
from adapt.errors import AdaptError, term
from adapt.kernels import FoldedBatchNorm, fold_conv_batchnorms_, unfold_conv_batchnorm_
from adapt.methods.base import Method
from adapt.methods.lora import lora_eligible_weights
from adapt.methods.mixins import with_mixin, without_mixin
from adapt.methods.spt.allocation import RULES, Allocation, allocate, budget_amount, plot_allocation
from adapt.methods.spt.ranking import ranked, real_name
from adapt.methods.spt.sparse import SparseDelta, SparseDeltaConv2d, SparseDeltaLinear
from adapt.methods.spt.structured import (ADAPTER_FORMS, KINDS, UNDROPPED, StructuredDelta, WithStructured,
                                          fold_structured_, is_sequential)  # fmt: skip

if TYPE_CHECKING:
    from adapt.data import DataSplits
    from adapt.train_config import TrainConfig


@dataclasses.dataclass
class SPTConfig:
    rank: int = option(8, low=1, high=4096)
    alpha: float | None = option(None, low=0, low_open=True)  # LoRA scaling alpha / rank; None: 1, as the official code
    structured_module: str = option("lora", choices=KINDS)  # adapter: non-linear, cannot be merged
    # the adapter on each layer's output (the official BlockSPTSeq) or on its input (ours before; spt.structured)
    adapter_form: str = option("sequential", choices=ADAPTER_FORMS)
    structured_dropout: float = option(0.1, low=0, high=1, high_open=True)  # on the modules' input: a mask per layer, none on attn.proj
    structured_drop_path: float = option(0.1, low=0, high=1, high_open=True)  # on its output, per sample
    # stochastic depth on a frozen ViT's blocks (timm's linear rule up to this rate) in the sensitivity pass and
    # in training, as the official runs (train_spt.py --drop-path 0.1); 0 leaves the model's own
    backbone_drop_path: float = option(0.1, low=0, high=1, high_open=True)
    # how `prepare` finds the allocation: a budget ("0.4M", "1%") spent on fresh sensitivity scores, or a saved file
    budget: str | int | None = option(None, takes="a count such as 400000, or text such as 0.4M, 50k or 1%")
    allocation: str | None = None
    budget_rule: str = option("exact", choices=RULES)  # official: the released code's "closest to the budget"
    alpha_threshold: float = option(10.0, low=0, low_open=True)  # structured where sensitive count >= cost / this
    sensitivity_batches: int = option(16, low=1, high=100_000)
    sensitivity_batch_size: int = option(32, low=1, high=65_536)
    # first: the first batches x batch_size training images in order, unaugmented (the official SequentialSampler
    # with --no_aug); random: a seeded draw with replacement (unaugmented too)
    sensitivity_sample: str = option("first", choices=("first", "random"))
    # on BatchNorm networks, score, allocate and train on the weights with each frozen BatchNorm folded into
    # the conv before it: a delta on a raw conv weight would be amplified by the norm's 1/sigma
    fold_batchnorm: bool = True
    # the allocation itself (filled by `prepare`; what a checkpoint needs), under SPT's names (spt.ranking)
    structured: list[str] = dataclasses.field(default_factory=list)  # matrices that get the structured module
    unstructured: dict[str, int] = dataclasses.field(default_factory=dict)  # tensor -> selected count
    vectors: list[str] = dataclasses.field(default_factory=list)  # tensors that train whole

    def __post_init__(self) -> None:
        if self.budget is not None:
            budget_amount(self.budget)  # its text, now: the count is checked against the model in `prepare`

    def allocated(self) -> bool:
        return bool(self.structured or self.unstructured or self.vectors)


def _split(name: str) -> tuple[str, str]:
    module, _, leaf = name.rpartition(".")
    return module, leaf


def _sparse_join(module: nn.Module, leaf: str) -> type | None:
    """The mixin that runs a sparse delta on this layer's `leaf` without a weight-sized gradient, if any."""
    if leaf != "weight":
        return None
    if isinstance(module, nn.Linear):
        return SparseDeltaLinear
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return SparseDeltaConv2d
    return None


def _parameter(model: nn.Module, name: str) -> nn.Parameter:
    """A backbone tensor by name, also once a parametrization holds it."""
    module_name, leaf = _split(name)
    try:
        module = model.get_submodule(module_name)
        if parametrize.is_parametrized(module, leaf):
            return module.parametrizations[leaf].original
        return model.get_parameter(name)
    except AttributeError:
        raise AdaptError(f"SPT allocation names {name}, which this model does not have") from None


def _image_size(images) -> int | None:
    """The side of a dataset's (square) images, from its first one; None when it is empty."""
    return int(images[0][0].shape[-1]) if len(images) else None


def _block_rows(size: int, block: int | None) -> tuple[int, int]:
    """The rows of row block `block` of a fused tensor with `size` rows (None: all of them)."""
    return (0, size) if block is None else (block * size // 3, (block + 1) * size // 3)


class SPT(Method):
    name = "spt"
    summary = "sensitivity-aware budget: LoRA where many weights matter, sparse deltas elsewhere (He et al. 2023)"
    config_class = SPTConfig
    default_lr = 1e-3
    default_weight_decay = 1e-4  # ziplab/SPT configs (WEIGHT_DECAY=0.0001)
    budgeted = True
    averages_exactly = False  # runs may select other entries, and its LoRA parts are bilinear
    merge_refusal = "an adapter is non-linear (use structured_module lora)"

    def __init__(self, config: SPTConfig | None = None):
        super().__init__(config)
        if self.config.budget is not None and self.config.allocation is not None:
            raise AdaptError(f"spt takes {term('budget')} (allocated from fresh sensitivity) or {term('allocation')} FILE, not both")
        self.allocation: Allocation | None = None  # set by `prepare`; a checkpoint needs only its buffers
        self.folded_norms: list[FoldedBatchNorm] = []  # BatchNorms folded into convs by `apply`, unfolded by `fold`

    @property
    def mergeable(self) -> bool:
        """LoRA folds into the weights; an adapter is non-linear."""
        return self.config.structured_module == "lora" or not self.config.structured

    @classmethod
    def from_options(cls, options: dict) -> Method:
        """Options of a checkpoint written before BatchNorm folding existed name an allocation but no
        `fold_batchnorm`: that run trained on the unfolded weights, and must load that way."""
        allocated = any(options.get(k) for k in ("structured", "unstructured", "vectors"))
        if allocated and "fold_batchnorm" not in options:
            options = {**options, "fold_batchnorm": False}
        if allocated and "adapter_form" not in options:  # written before the sequential adapter: parallel
            options = {**options, "adapter_form": "parallel"}
        return super().from_options(options)

    # -- setting up from the task --------------------------------------------------------

    def prepare(self, model: nn.Module, data: DataSplits | None, config: TrainConfig | None) -> None:
        """Find the allocation: read `allocation`, or score `model` (the backbone with a fresh head) on
        the training images and spend `budget` (as the official code: 16 batches of 32). Without
        either (e.g. `adapt methods`), SPT trains only the head until it is given one."""
        if self.config.allocated():
            return
        if self.config.allocation is not None:
            allocation = Allocation.load(self.config.allocation)
            size = _image_size(data.train) if data is not None else None  # the run's images
            if size is not None and allocation.image_size is not None and allocation.image_size != size:
                self.notes.append(f"the allocation {self.config.allocation} was scored on {allocation.image_size}px "
                                  f"images ({allocation.source}); this run trains on {size}px")  # fmt: skip
        elif self.config.budget is not None and data is not None:
            from adapt.methods.spt.sensitivity import sensitivity_once

            scored = copy.deepcopy(model)
            self._fold_batchnorms(scored)
            set_vit_drop_path(scored, self.config.backbone_drop_path)
            images = data.tuning_images  # VTAB-1k: train800, as the official sensitivity configs
            scores, remembered = sensitivity_once(
                scored, images, self.config.sensitivity_batches, self.config.sensitivity_batch_size,
                config.seed if config else 0, self.config.sensitivity_sample,
                (data.spec, self.config.backbone_drop_path, self.config.fold_batchnorm))  # fmt: skip
            scores, eligible, always = ranked(scored, scores, lora_eligible_weights(scored))
            allocation = allocate(scores, self.config.budget, eligible, self.config.rank, self.config.alpha_threshold,
                                  self.config.structured_module, self.config.budget_rule, always,
                                  self.config.adapter_form)  # fmt: skip
            allocation.image_size = _image_size(images)
            allocation.source = (f"{data.spec}: the first {min(len(images), self.config.sensitivity_batches * self.config.sensitivity_batch_size)}"
                                 f" of {len(images)} training images" if self.config.sensitivity_sample == "first" else
                                 f"{data.spec}: {self.config.sensitivity_batches} x {self.config.sensitivity_batch_size} "
                                 f"images drawn from {len(images)}")  # fmt: skip
            if remembered:
                self.notes.append("sensitivity: the scores of this task's previous budget (one pass per task, as the "
                                  "official code)")  # fmt: skip
        elif data is not None:
            raise AdaptError(f"{term('method')} spt needs {term('budget')} (e.g. 0.4M, 1%) or {term('allocation')} alloc.json")
        else:
            return
        counts = {n: len(i) for n, i in allocation.unstructured.items()}
        self.config = dataclasses.replace(self.config, rank=allocation.rank, structured_module=allocation.structured_module,
                                          adapter_form=allocation.adapter_form, structured=list(allocation.structured),
                                          unstructured=counts, vectors=list(allocation.vectors))  # fmt: skip
        self.allocation = allocation

    def write_run_files(self, out_dir: Path) -> None:
        """The allocation of a fresh run, as JSON (what --allocation takes) and a heatmap."""
        if self.allocation is not None:
            self.allocation.save(out_dir / "allocation.json")
            plot_allocation(self.allocation, out_dir / "allocation.png")

    def _fold_batchnorms(self, model: nn.Module) -> list[FoldedBatchNorm]:
        """With fold_batchnorm, move each frozen BatchNorm's scale into the conv before it (exact under
        frozen statistics; the model keeps its architecture, so a merge is still a timm state dict).
        Returns what `fold` needs to put the merged model back in the plain parametrization."""
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if self.config.fold_batchnorm and has_batchnorm:
            return fold_conv_batchnorms_(model, model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        return []

    # -- realizing the allocation on the model -------------------------------------------

    def _sparse_entries(self, model: nn.Module) -> dict[str, list[tuple[int | None, int]]]:
        """Real tensor -> the (row block, count) of each of its names that trains sparsely; a whole
        row block (a fused bias's q part, say) is a sparse delta on all of its entries."""
        entries: dict[str, list[tuple[int | None, int]]] = defaultdict(list)
        for name, count in self.config.unstructured.items():
            real, block = real_name(name)
            entries[real].append((block, count))
        for name in self.config.vectors:
            real, block = real_name(name)
            if block is not None:
                entries[real].append((block, _parameter(model, real).numel() // 3))
        return entries

    def _indices(self, model: nn.Module, real: str) -> list[int]:
        """The flat indices of a real tensor's sparse delta, from the allocation's per-name indices."""
        tensor = _parameter(model, real)
        per_row = tensor[0].numel() if tensor.ndim > 1 else 1
        indices = []
        for name, flat in [(n, f) for n, f in self.allocation.unstructured.items() if real_name(n)[0] == real]:
            start = _block_rows(tensor.shape[0], real_name(name)[1])[0] * per_row
            indices += [start + i for i in flat]
        for name in self.allocation.vectors:
            if real_name(name)[0] == real and real_name(name)[1] is not None:
                start, stop = _block_rows(tensor.shape[0], real_name(name)[1])
                indices += list(range(start, stop))
        return sorted(indices)

    @classmethod
    def sweeping(cls):
        """One sensitivity pass per task: every budget of a sweep is allocated from the same scores."""
        from adapt.methods.spt.sensitivity import remembered

        return remembered()

    @classmethod
    def sweep_key(cls, option: str, value: str):
        """Budgets are the same when they ask for the same count (100k and 0.1M) or share."""
        return budget_amount(value) if option == "budget" else super().sweep_key(option, value)

    def backbone_drop_path(self, model: nn.Module, requested: float) -> float:
        """SPT sets a ViT's stochastic depth itself (backbone_drop_path, set_vit_drop_path)."""
        from timm.models.vision_transformer import VisionTransformer

        own = self.config.backbone_drop_path
        return own if own > 0 and isinstance(model, VisionTransformer) else requested

    def add_trainable(self, model: nn.Module) -> None:
        for name in [*self.config.structured, *self.config.unstructured, *self.config.vectors]:
            _parameter(model, real_name(name)[0])  # each named tensor exists, or one line naming it
        self.folded_norms = self._fold_batchnorms(model)
        set_vit_drop_path(model, self.config.backbone_drop_path)
        blocks: dict[str, list[int | None]] = defaultdict(list)
        for name in self.config.structured:
            real, block = real_name(name)
            blocks[_split(real)[0]].append(block)
        for layer_name, layer_blocks in blocks.items():
            layer = model.get_submodule(layer_name)
            size = layer.weight.shape[0]
            sequential = is_sequential(layer_name, self.config.structured_module, self.config.adapter_form)
            layer.structured = nn.ModuleDict({
                str(block) if block is not None else "all": StructuredDelta(
                    layer, _block_rows(size, block), self.config.structured_module, self.config.rank, self.config.alpha,
                    self.config.structured_drop_path, sequential)
                for block in layer_blocks
            })  # fmt: skip
            undropped = layer_name.endswith(UNDROPPED)
            layer.structured_dropout = 0.0 if undropped else self.config.structured_dropout
            with_mixin(layer, WithStructured)
        for name in self.config.vectors:
            if real_name(name)[1] is None:
                _parameter(model, name).requires_grad_(True)
        sparse = self._sparse_entries(model)
        joined = {real: _sparse_join(model.get_submodule(_split(real)[0]), _split(real)[1]) for real in sparse}
        for real in sorted(sparse, key=lambda r: joined[r] is None):  # mixins before parametrizations (mixins.py)
            module_name, leaf = _split(real)
            module = model.get_submodule(module_name)
            delta = SparseDelta(sum(count for _, count in sparse[real]))
            if joined[real] is None:  # not a Linear/Conv2d weight (a bias, a norm): W + scatter, as a parametrization
                parametrize.register_parametrization(module, leaf, delta, unsafe=True)
            else:
                module.sparse = delta
                with_mixin(module, joined[real])
        if self.allocation is not None:  # a fresh run: point each delta at its entries
            for real in self._sparse_entries(model):
                _delta_and_weight(model, real)[0].indices.copy_(torch.tensor(self._indices(model, real), dtype=torch.long))
        self._check_indices(model)

    def load_trainable_state(self, model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "") -> None:
        super().load_trainable_state(model, tensors, source)
        self._check_indices(model, source)

    def _check_indices(self, model: nn.Module, source: str = "the allocation") -> None:
        """Every sparse index must address an entry of its tensor (else the forward pass would fail)."""
        for real in self._sparse_entries(model):
            delta, weight = _delta_and_weight(model, real)
            indices, size = delta.indices, weight.numel()
            if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= size):
                raise AdaptError(f"{source}: sparse indices of {real} fall outside its {size:,} entries")

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = super().trainable_state(model)
        state.update({k: b for k, b in model.named_buffers() if k.endswith(".indices") and isinstance(
            model.get_submodule(k.rsplit(".", 1)[0]), SparseDelta)})  # fmt: skip
        return state

    def report(self) -> str:
        sparse = sum(self.config.unstructured.values())
        kind = "LoRA" if self.config.structured_module == "lora" else "adapters"
        return (f"SPT: {kind} rank {self.config.rank} on {len(self.config.structured)} matrices, sparse deltas of "
                f"{sparse:,} entries in {len(self.config.unstructured)}, {len(self.config.vectors)} whole vectors")  # fmt: skip

    def options_line(self) -> str:
        """The allocation as a summary rather than its lists of names."""
        return self.report()

    def fold(self, model: nn.Module) -> nn.Module:
        for real in sorted(self._sparse_entries(model), key=lambda r: _on_layer(model, r)):  # parametrizations first
            module_name, leaf = _split(real)
            module = model.get_submodule(module_name)
            delta, weight = _delta_and_weight(model, real)
            delta.fold_into(weight)
            if _on_layer(model, real):
                without_mixin(module, _sparse_join(module, leaf))
                del module.sparse
            else:
                parametrize.remove_parametrizations(module, leaf, leave_parametrized=False)
        for module in list(model.modules()):
            if isinstance(module, WithStructured):
                fold_structured_(module)
        # back to the backbone's own parametrization, so that a merged SPT model and the pretrained one differ
        # only by what SPT learned (task vectors, soups); a pair whose gamma has a zero stays folded
        self.folded_norms = [pair for pair in self.folded_norms if not unfold_conv_batchnorm_(model, pair)]
        return model


def set_vit_drop_path(model: nn.Module, rate: float) -> None:
    """Stochastic depth on a timm ViT's blocks, rising linearly from 0 to `rate` (timm's and the official
    code's rule); other models, or rate 0, are left as they are. Only active in training mode."""
    from timm.layers import DropPath
    from timm.models.vision_transformer import VisionTransformer

    if rate <= 0 or not isinstance(model, VisionTransformer):
        return
    depth = len(model.blocks)
    for i, block in enumerate(model.blocks):
        block_rate = rate * i / max(depth - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else nn.Identity())


def _on_layer(model: nn.Module, name: str) -> bool:
    """Whether the sparse delta on tensor `name` is run by its layer (a sparse mixin), not a parametrization."""
    module_name, leaf = _split(name)
    return leaf == "weight" and isinstance(getattr(model.get_submodule(module_name), "sparse", None), SparseDelta)


def _delta_and_weight(model: nn.Module, name: str) -> tuple[SparseDelta, torch.Tensor]:
    """The sparse delta on tensor `name` and the frozen tensor it adds to."""
    module_name, leaf = _split(name)
    module = model.get_submodule(module_name)
    if _on_layer(model, name):
        return module.sparse, module.weight
    return module.parametrizations[leaf][0], module.parametrizations[leaf].original
