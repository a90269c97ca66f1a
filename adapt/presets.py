"""Paper recipes as presets: `adapt tune --preset ssf-vtab`, `adapt soup --preset ties`, ...

A preset is a named, frozen record of a command's options as a paper's official code sets them,
with the file each value comes from. Its values are the command's own option names, so applying
one is one more configuration layer: the command's defaults < the preset (and, for a VTAB-1k
task, the preset's values for that task) < a --config file < the flags typed. Adding a preset is
one entry in PRESETS below; every value is checked against ../shared/recipes.md's citations.

What the papers report is the best test accuracy over the run; adapt's headline stays the
final epoch's (see each preset's notes). Paper figures (`paper`) are percentages on VTAB-1k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapt.errors import AdaptError

# VTAB-1k task folders (adapt.data.vtab.VTAB_TASKS), in the standard order
TASKS = ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397", "patch_camelyon",
         "eurosat", "resisc45", "diabetic_retinopathy", "clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc",
         "dsprites_ori", "smallnorb_azi", "smallnorb_ele")  # fmt: skip


@dataclass(frozen=True)
class PaperFigures:
    """A paper's published VTAB-1k accuracies (%): per task where published, and its headline means."""

    source: str
    tasks: dict[str, float] = field(default_factory=dict)
    plain_mean: float | None = None  # over the 19 tasks
    group_mean: float | None = None  # the mean of the natural, specialized and structured means


@dataclass(frozen=True)
class Preset:
    name: str
    command: str  # the command it configures: tune, soup or perceptual-init
    reproduces: str  # one line: what it reproduces
    values: dict[str, Any]  # the command's options (long names), for every task
    sources: dict[str, str]  # option -> "repository : file (line)"
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)  # VTAB-1k task -> its own values
    notes: tuple[str, ...] = ()
    paper: PaperFigures | None = None
    weights: str | None = None  # the timm tag of the checkpoint it was published with (adapt.weights_identity)

    def weights_note(self, weights: str | None, option: str = "weights") -> str | None:
        """A line when `weights` are not (or do not say they are) the checkpoint the preset was published with."""
        from adapt.weights_identity import weights_note

        return weights_note(self.name, self.weights, weights, option) if self.weights else None

    def missing_task_note(self, task: str | None) -> str | None:
        """A line when the preset has per-task values but none for `task` (None: data that is not a VTAB-1k task):
        which options then hold values that are not the paper's for it."""
        if not self.per_task or task in self.per_task:
            return None
        keys = sorted({key for values in self.per_task.values() for key in values})
        used = ", ".join(f"{key} {self.values[key]!r} (shared)" if key in self.values else f"{key} (adapt's default)"
                         for key in keys)  # fmt: skip
        what = f"task {task!r}" if task else "this data (not a VTAB-1k task)"
        return f"preset {self.name} has no per-task values for {what}: {used}, not the paper's for it"

    def values_for(self, task: str | None = None) -> dict[str, Any]:
        """The options for one VTAB-1k task (its own values over the shared ones), or the shared ones."""
        return {**self.values, **(self.per_task.get(task, {}) if task else {})}


def _per_task(columns: tuple[str, ...], rows: dict[str, tuple]) -> dict[str, dict[str, Any]]:
    return {task: dict(zip(columns, row)) for task, row in rows.items()}


def _scores(text: str) -> dict[str, float]:
    """19 published accuracies in TASKS order, as the V-PETL Bench README prints them."""
    values = [float(v) for v in text.replace("|", " ").split()]
    if len(values) != len(TASKS):
        raise ValueError(f"expected {len(TASKS)} scores, got {len(values)}")
    return dict(zip(TASKS, values))


SSF = "dongzelian/SSF : train_scripts/vit/vtab/<task>/train_ssf.sh"
HST = "AFeng-x/HST : train_scripts/vit/vtab/<task>/train_s4.sh"
SPT = "ziplab/SPT : configs/vtab_supervised_spt_{lora,adapter}.sh"
NOAH = "ZhangYuanhan-AI/NOAH : configs/LoRA/VTAB/slurm_train_lora_vtab.sh"
VPETL = "synbol/Parameter-Efficient-Transfer-Learning-Benchmark : ImageClassification/scripts/run_vit_lora.sh"
VPETL_README = "synbol/Parameter-Efficient-Transfer-Learning-Benchmark : README.md"
TIMM_COOLDOWN = "timm create_scheduler: num_epochs + cooldown_epochs (default 10), as SSF's train.py L202 runs it"
TEST_SELECTED = ("the paper reports the best test accuracy over its evaluations; adapt's headline is the final "
                 "epoch's, with the best over periodic evaluations beside it")  # fmt: skip
VIT_IN21K = "vit_base_patch16_224"  # the ViT-B/16 architecture; the weights are the user's --weights
RANDAUG = "rand-m9-mstd0.5-inc1"  # V-PETL Bench's train_aug (timm RandAugment)


PRESETS: dict[str, Preset] = {}


def _register(preset: Preset) -> None:
    PRESETS[preset.name] = preset


# SSF's trainer (a timm train.py fork) and HST's copy of it run VTAB-1k with the same flags
_TIMM_TRAINER_VTAB = {"backbone": VIT_IN21K, "image_size": 224, "augment": "off", "batch_size": 64, "drop_last": True,
                      "epochs": 100, "cooldown_epochs": 10, "warmup": 0.1, "warmup_lr": 1e-7, "min_lr": 1e-8,
                      "lr_stepping": "epoch", "seed": 42, "eval_every": 1, "normalize": "inception"}  # fmt: skip


def _timm_trainer_sources(repo: str, scripts: str, backbone: str, normalize: str, seed: str) -> dict[str, str]:
    """Where each of _TIMM_TRAINER_VTAB's values comes from in SSF's or HST's repository."""
    return {"backbone": f"{repo} : {backbone}", "normalize": f"{repo} : {normalize} (mean = std = 0.5)",
            "image_size": scripts, "augment": f"{scripts} (--no-aug --direct-resize)", "batch_size": f"{scripts} (2 x 32)",
            "drop_last": f"{repo} : data/loader.py L257 (create_loader: drop_last=is_training)",
            "lr_stepping": f"{repo} : train.py (lr_scheduler.step(epoch + 1) after each epoch; timm CosineLRScheduler)",
            "epochs": scripts, "cooldown_epochs": TIMM_COOLDOWN, "warmup": f"{scripts} (--warmup-epochs 10 of 100)",
            "warmup_lr": scripts, "min_lr": scripts, "seed": f"{repo} : {seed} (default 42)",
            "eval_every": f"{repo} : train.py (test every epoch; the best is checkpointed)",
            "lr": scripts, "weight_decay": f"{scripts} (no decay on 1-D parameters)", "drop_path": scripts}  # fmt: skip


_register(Preset(
    name="ssf-vtab",
    command="tune",
    reproduces="SSF on VTAB-1k (Lian et al. 2022): 73.10 mean of 19 tasks, ViT-B/16 IN-21k (AugReg)",
    values={"method": "ssf", **_TIMM_TRAINER_VTAB},
    sources={"method": SSF, **_timm_trainer_sources("dongzelian/SSF", SSF, "models/vision_transformer.py L121-123 "
                                                   "(AugReg in21k)", "models/vision_transformer.py L52", "train.py L294")},
    per_task=_per_task(("lr", "weight_decay", "drop_path"), {
        "cifar": (5e-3, 5e-5, 0.0), "caltech101": (1e-3, 5e-2, 0.1), "dtd": (5e-3, 5e-5, 0.0),
        "oxford_flowers102": (5e-3, 5e-5, 0.0), "oxford_iiit_pet": (5e-3, 5e-5, 0.0), "svhn": (1e-2, 5e-5, 0.0),
        "sun397": (5e-3, 5e-5, 0.0), "patch_camelyon": (5e-3, 5e-5, 0.0), "eurosat": (3e-3, 5e-2, 0.2),
        "resisc45": (2e-3, 5e-5, 0.1), "diabetic_retinopathy": (5e-3, 5e-5, 0.2), "clevr_count": (2e-3, 5e-2, 0.1),
        "clevr_dist": (5e-2, 5e-2, 0.1), "dmlab": (5e-3, 5e-5, 0.1), "kitti": (1e-2, 5e-5, 0.0),
        "dsprites_loc": (1e-2, 5e-5, 0.0), "dsprites_ori": (5e-3, 5e-5, 0.2), "smallnorb_azi": (2e-2, 5e-5, 0.1),
        "smallnorb_ele": (5e-3, 5e-2, 0.2),
    }),  # fmt: skip
    notes=("weights: timm's vit_base_patch16_224.augreg_in21k (mean = std = 0.5), given with --weights",
           "AMP (fp16) in the official runs: --precision fp16 on a GPU", TEST_SELECTED),  # fmt: skip
    paper=PaperFigures(f"SSF abstract (arXiv 2210.08823); per task: {VPETL_README} L423",
                       _scores("69.0 92.6 75.1 99.4 91.8 90.2 52.9 | 87.4 95.9 87.4 75.5 | "
                               "75.9 62.3 53.3 80.6 77.3 54.9 29.5 37.9"), plain_mean=73.10),  # fmt: skip
    weights="augreg_in21k",
))

_register(Preset(
    name="hst-vtab",
    command="tune",
    reproduces="HST on VTAB-1k (Lin et al. 2023): 75.99 mean of its 19 per-task figures, ViT-B/16 IN-21k (AugReg)",
    values={"method": "hst", **_TIMM_TRAINER_VTAB},
    sources={"method": "AFeng-x/HST : models/vit_hsn.py L156-157, L316-327 (side net, bridges, block LayerNorms)",
             **_timm_trainer_sources("AFeng-x/HST", HST, "models/vit_hsn.py L112-113 (AugReg in21k)",
                                     "models/vit_hsn.py L45", "train.py L296")},
    per_task=_per_task(("lr", "weight_decay", "drop_path"), {
        "cifar": (1e-2, 5e-4, 0.0), "caltech101": (1e-3, 5e-4, 0.1), "dtd": (1e-2, 5e-4, 0.0),
        "oxford_flowers102": (1e-3, 5e-5, 0.0), "oxford_iiit_pet": (1e-2, 5e-4, 0.0), "svhn": (1e-2, 5e-5, 0.1),
        "sun397": (1e-2, 5e-5, 0.0), "patch_camelyon": (5e-3, 5e-4, 0.1), "eurosat": (1e-3, 5e-4, 0.1),
        "resisc45": (5e-3, 5e-4, 0.0), "diabetic_retinopathy": (1e-3, 5e-5, 0.1), "clevr_count": (1e-3, 5e-4, 0.1),
        "clevr_dist": (5e-3, 5e-4, 0.1), "dmlab": (5e-3, 5e-4, 0.1), "kitti": (5e-3, 5e-2, 0.1),
        "dsprites_loc": (5e-3, 5e-4, 0.1), "dsprites_ori": (1e-3, 5e-4, 0.1), "smallnorb_azi": (1e-3, 5e-4, 0.1),
        "smallnorb_ele": (1e-3, 5e-2, 0.2),
    }),  # fmt: skip
    notes=("the command lines' values where their trailing comments disagree (eurosat wd, kitti lr)",
           "the side network's blocks drop paths at the task's drop_path too, rising over its 12 blocks (vit_hsn.py "
           "L222-233)",
           "weights: timm's vit_base_patch16_224.augreg_in21k, given with --weights",
           "AMP (fp16) in the official runs: --precision fp16 on a GPU",
           "the mean is that of the per-task column beside it (75.99); the abstract rounds to 76.0 (v1) and 76.1 (v3)",
           TEST_SELECTED),  # fmt: skip
    paper=PaperFigures(f"per task and their mean: {VPETL_README} L431 (HST arXiv 2310.05393: 76.0 v1, 76.1 v3)",
                       _scores("76.7 94.1 74.8 99.6 91.1 91.2 52.3 | 87.1 96.3 88.6 76.5 | "
                               "85.4 63.7 52.9 81.7 87.2 56.8 35.8 52.1"), plain_mean=75.99),  # fmt: skip
    weights="augreg_in21k",
))

_SPT_VALUES = {"method": "spt", "backbone": VIT_IN21K, "image_size": 224, "augment": "off", "batch_size": 64,
               "drop_last": False, "normalize": "imagenet", "epochs": 100, "warmup": 0.1, "warmup_lr": 1e-6,
               "min_lr": 1e-5, "lr_stepping": "epoch-lagged", "lr": 1e-3, "weight_decay": 1e-4, "drop_path": 0.1,
               "seed": 0, "rank": 8, "budget": "0.2M,0.4M,0.6M,0.8M,1.0M", "eval_every": 10, "eval_from": 1,
               "eval_last": 10}  # fmt: skip
_SPT_SOURCES = {key: SPT for key in _SPT_VALUES} | {
    "warmup_lr": "ziplab/SPT : train_spt.py L101", "min_lr": "ziplab/SPT : train_spt.py L103",
    "drop_last": "ziplab/SPT : train_spt.py L274-280 (drop_last=False)",
    "lr_stepping": "ziplab/SPT : train_spt.py L491 (lr_scheduler.step(epoch) after each epoch: one epoch behind)",
    "drop_path": "ziplab/SPT : train_spt.py L63 (--drop-path 0.1, never overridden)",
    "budget": f"{SPT} (for GM in param_req_1.0 ... param_req_0.2: each task keeps its best budget)",
    "epochs": "ziplab/SPT : train_spt.py main loop (100, no cooldown)",
    "normalize": "ziplab/SPT : lib/datasets.py L458-461 (no --inception: ImageNet mean/std)",
    "eval_every": "ziplab/SPT : train_spt.py L493-496 (epoch % 10 == 0 or epoch >= epochs - 10, 0-based; the max)",
    "eval_from": "ziplab/SPT : train_spt.py L493 (0-based epoch 0 is the first tested)",
    "eval_last": "ziplab/SPT : train_spt.py L493 (each of the last 10 epochs)"}  # fmt: skip
_SPT_NOTES = ("the five budgets run one after the other, each task keeping the budget whose best evaluation is "
              "highest (the official csv's max_accuracy); --budget 0.4M runs one",
              "the budget rule is the released code's (budget_rule=official: the plan closest to the budget)",
              "sensitivity on the first 512 images of train800 (the sensitivity configs pass no --test)",
              "weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz", TEST_SELECTED)  # fmt: skip

_register(Preset(
    name="spt-lora-vtab",
    command="tune",
    reproduces="SPT-LoRA on VTAB-1k (He et al. 2023): 76.4 mean of the 3 group means, ViT-B/16 IN-21k",
    values={**_SPT_VALUES, "option": ["structured_module=lora", "budget_rule=official"]},
    sources={**_SPT_SOURCES, "option": f"{SPT} (--structured_type=lora, BlockSPTParallel); engine.py L276-283 "
                                       "(budget_rule=official)"},
    notes=_SPT_NOTES,
    paper=PaperFigures("SNELL (NeurIPS 2024) Table 1, quoting SPT; per task not published", group_mean=76.4),
    weights="orig_in21k",
))

_register(Preset(
    name="spt-adapter-vtab",
    command="tune",
    reproduces="SPT-Adapter on VTAB-1k (He et al. 2023): 76.4 mean of the 3 group means, ViT-B/16 IN-21k",
    values={**_SPT_VALUES, "option": ["structured_module=adapter", "adapter_form=sequential", "budget_rule=official"]},
    sources={**_SPT_SOURCES, "option": f"{SPT} (--structured_type=adapter, BlockSPTSeq); engine.py L276-283 "
                                       "(budget_rule=official)"},
    notes=_SPT_NOTES,
    paper=PaperFigures("SNELL (NeurIPS 2024) Table 1, quoting SPT; per task not published", group_mean=76.4),
    weights="orig_in21k",
))

_register(Preset(
    name="lora-vtab",
    command="tune",
    reproduces="LoRA on VTAB-1k as NOAH runs it (rank 8 on the fused qkv, unscaled, dropout 0.1): 72.25 mean",
    values={"method": "lora", "backbone": VIT_IN21K, "image_size": 224, "augment": "off", "batch_size": 64,
            "drop_last": True, "epochs": 100, "warmup": 0.1, "warmup_lr": 1e-6, "min_lr": 1e-5,
            "lr_stepping": "epoch-lagged", "lr": 1e-3, "weight_decay": 1e-4, "drop_path": 0.1, "seed": 0, "rank": 8,
            "alpha": 8, "dropout": 0.1, "targets": r"qkv$", "eval_every": 10, "eval_from": 1, "normalize": "imagenet"},
    sources={"method": NOAH, "backbone": "ZhangYuanhan-AI/NOAH : README L67 (ViT-B_16.npz)", "image_size": NOAH,
             "augment": f"{NOAH} (--no_aug --direct_resize)", "batch_size": NOAH, "epochs": NOAH,
             "warmup": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L88-107", "warmup_lr": "same, L88-107",
             "min_lr": "same, L88-107", "lr": NOAH, "weight_decay": NOAH,
             "drop_path": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L59", "seed": "same, L170",
             "rank": "ZhangYuanhan-AI/NOAH : experiments/LoRA/ViT-B_prompt_lora_8.yaml",
             "alpha": "ZhangYuanhan-AI/NOAH : model/supernet_vision_transformer_timm.py L275-279 (no scaling: alpha = rank)",
             "dropout": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L207, L307",
             "targets": "ZhangYuanhan-AI/NOAH : model/supernet_vision_transformer_timm.py L224-228 (fused qkv)",
             "drop_last": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L274-281 (drop_last=True)",
             "lr_stepping": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L414 (lr_scheduler.step(epoch) after "
                            "each epoch: one epoch behind)",
             "eval_every": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L205, L427-430 (every 10, the max)",
             "eval_from": "ZhangYuanhan-AI/NOAH : supernet_train_prompt.py L427 (epoch % 10 == 0 or the last, "
                          "0-based: epochs 1, 11, ..., 91 and 100)",
             "normalize": "ZhangYuanhan-AI/NOAH : lib/datasets.py ~L238-241 (ImageNet mean/std)"},  # fmt: skip
    notes=("weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz", TEST_SELECTED),
    paper=PaperFigures(f"{VPETL_README} L421 (the NOAH row)",
                       _scores("67.1 91.4 69.4 98.8 90.4 85.3 54.0 | 84.9 95.3 84.4 73.6 | "
                               "82.9 69.2 49.8 78.5 75.7 47.1 31.0 44.0"), plain_mean=72.25),  # fmt: skip
    weights="orig_in21k",
))

_register(Preset(
    name="lora-vpetl-vtab",
    command="tune",
    reproduces="LoRA on VTAB-1k as V-PETL Bench runs it (rank 8, per-task lr, weight decay and augmentation)",
    values={"method": "lora", "backbone": VIT_IN21K, "image_size": 224, "batch_size": 64, "drop_last": False,
            "epochs": 100, "warmup": 0.1, "warmup_lr": 1e-6, "min_lr": 1e-5, "lr_stepping": "epoch-lagged",
            "drop_path": 0.1, "seed": 42, "rank": 8, "alpha": 8, "targets": r"qkv$",
            "option": ["qkv_blocks=q,v", "init=vpetl"], "eval_every": 10, "normalize": "imagenet",
            "interpolation": "bilinear", "train_crop": "resize"},
    sources={"method": VPETL, "backbone": VPETL, "image_size": "…/dataloader/vtab.py (Resize((224,224)))",
             "batch_size": "…/configs/model_lora/vtab/*.yaml", "epochs": "…/configs/model_lora/vtab/*.yaml",
             "warmup": "…/train/train_model_lora.py L180-181", "warmup_lr": "same", "min_lr": "same",
             "drop_path": f"{VPETL} (--dpr 0.1)", "seed": "…/train/train_model_lora.py L97", "rank": f"{VPETL} (topN=8)",
             "alpha": "…/models/vision_transformer_lora.py L99-120 (no scaling)", "lr": VPETL, "weight_decay": VPETL,
             "augment": "…/configs/model_lora/vtab/<task>.yaml (train_aug: RandAug rand-m9-mstd0.5-inc1)",
             "eval_every": "…/train/train_model_lora.py L60-64 (ep % 10 == 9, 0-based: epochs 10, ..., 100; the max)",
             "drop_last": "…/dataloader/vtab.py L84-88 (train800val200: drop_last=False)",
             "lr_stepping": "…/train/train_model_lora.py L53-54 (scheduler.step(ep) after each epoch: one behind)",
             "label_smoothing": "…/configs/model_lora/vtab/<task>.yaml (labelsmoothing)",
             "normalize": "…/dataloader/vtab.py (ImageNet mean/std)",
             "targets": "…/models/vision_transformer_lora.py L99-120 (LoRA on the q and v outputs of qkv)",
             "option": "…/models/vision_transformer_lora.py L99-108 (linear_a/b_q kaiming-uniform, linear_a/b_v "
                       "zeros: init=vpetl)",
             "interpolation": "…/dataloader/vtab.py L70-73 (test: transforms.Resize((224, 224)), bilinear)",
             "train_crop": "…/dataloader/vtab.py L55-65 (RandomResizedCrop replaced by Resize((224, 224), bicubic))"},  # fmt: skip
    per_task=_per_task(("lr", "weight_decay", "augment", "label_smoothing"), {
        "cifar": (0.005, 0.005, "off", 0.1), "caltech101": (0.006, 0.35, "off", 0.1),
        "dtd": (0.0032, 0.04, RANDAUG, 0.1), "oxford_flowers102": (0.05, 0.11, RANDAUG, 0.1),
        "oxford_iiit_pet": (0.0007, 0.8, RANDAUG, 0.1), "svhn": (0.001, 0.005, RANDAUG, 0.1),
        "sun397": (0.0017, 0.01, RANDAUG, 0.1), "patch_camelyon": (0.0072, 0.002, RANDAUG, 0.1),
        "eurosat": (0.06, 0.001, RANDAUG, 0.1), "resisc45": (0.01, 0.01, RANDAUG, 0.1),
        "diabetic_retinopathy": (0.004, 0.0003, RANDAUG, 0.1), "clevr_count": (0.0033, 0.01, RANDAUG, 0.0),
        "clevr_dist": (0.0018, 0.005, "off", 0.0), "dmlab": (0.009, 0.1, RANDAUG, 0.0), "kitti": (0.0072, 0.0001, RANDAUG, 0.1),
        "dsprites_loc": (0.003, 0.001, "off", 0.0), "dsprites_ori": (0.01, 0.05, "off", 0.0),
        "smallnorb_azi": (0.0062, 0.005, "off", 0.0), "smallnorb_ele": (0.0011, 0.0005, "off", 0.0),
    }),  # fmt: skip
    notes=("LoRA on the q and v row blocks of the fused qkv, started as the released code starts them: q's both "
           "factors kaiming-uniform, v's both zero, so the v branch never trains (as released)",
           "V-PETL's AdamW decays every trained tensor, biases too; adapt decays matrices only",
           "weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz", TEST_SELECTED),  # fmt: skip
    paper=PaperFigures(f"{VPETL_README} L421",
                       _scores("67.1 91.4 69.4 98.8 90.4 85.3 54.0 | 84.9 95.3 84.4 73.6 | "
                               "82.9 69.2 49.8 78.5 75.7 47.1 31.0 44.0"), plain_mean=72.25),  # fmt: skip
    weights="orig_in21k",
))

_register(Preset(
    name="dreamsim-nights",
    command="perceptual-init",
    reproduces="DreamSim's training on NIGHTS (Fu et al. 2023), single dino_vitb16 recipe: LoRA r16 on qkv, Adam (0.5, 0.999)",
    values={"backbone": VIT_IN21K, "from": "pretrained", "method": "lora", "rank": 16, "alpha": 32, "dropout": 0.2,
            "targets": r"qkv$", "optimizer": "adam", "lr": 3e-4, "weight_decay": 0.0, "batch_size": 32, "epochs": 8,
            "margin": 0.05, "seed": 1234},
    sources={key: "ssundaram21/dreamsim : configs/train_single_model_lora.yaml" for key in
             ("lr", "weight_decay", "batch_size", "epochs", "margin", "seed", "rank", "alpha", "dropout")}
    | {"optimizer": "ssundaram21/dreamsim : training/train.py L180 (Adam, betas 0.5, 0.999)",
       "method": "ssundaram21/dreamsim : training/train.py L198-206 (peft LoraConfig)",
       "targets": "ssundaram21/dreamsim : training/train.py L198-206 (target_modules qkv)",
       "backbone": "ssundaram21/dreamsim : configs/train_single_model_lora.yaml (model_type dino_vitb16, feat_type cls)",
       "from": "ssundaram21/dreamsim : configs/train_single_model_lora.yaml (a pretrained DINO ViT-B/16)"},  # fmt: skip
    notes=("DreamSim starts from a pretrained DINO ViT-B/16: give its weights with --from FILE (e.g. timm's "
           "vit_base_patch16_224.dino, saved as .safetensors)",
           "DreamSim reports the NIGHTS test 2AFC over both test parts together: nights_total",
           "its ViTs have no BatchNorm: on a BatchNorm backbone the statistics stay frozen (--norm-statistics)"),
    weights="dino",
))

_register(Preset(
    name="ties",
    command="soup",
    reproduces="TIES-merging (Yadav et al. 2023): top 20% by magnitude, sign by mass, disjoint mean, λ 0.8-2.5",
    values={"recipe": "ties", "density": 0.2, "trim": "global", "scale": "auto",
            "scale_grid": ",".join(f"{0.8 + 0.1 * i:.1f}" for i in range(18))},
    sources={"recipe": "prateeky2806/ties-merging : src/utils/merge_utils.py L332-364 (mass sign, dis-mean)",
             "density": "prateeky2806/ties-merging : src/utils/merge_utils.py L122-142 (topk20)",
             "trim": "prateeky2806/ties-merging : src/utils/merge_utils.py L122-142 (over the whole vector)",
             "scale": "prateeky2806/ties-merging : src/ties_merging.py L290-292 (chosen on validation)",
             "scale_grid": "prateeky2806/ties-merging : README (linear+0.8+2.51+0.1)"},  # fmt: skip
    notes=("--scale auto chooses on held-out data: pass --data (and --split)",),
))

_register(Preset(
    name="task-arithmetic",
    command="soup",
    reproduces="Task arithmetic (Ilharco et al. 2023) with the λ grid of the TIES paper's baseline, 0.1-1.0",
    values={"recipe": "task-arithmetic", "scale": "auto", "scale_grid": ",".join(f"{0.1 * i:.1f}" for i in range(1, 11))},
    sources={"recipe": "prateeky2806/ties-merging : README (task arithmetic baseline)",
             "scale": "prateeky2806/ties-merging : src/ties_merging.py L290-292 (chosen on validation)",
             "scale_grid": "prateeky2806/ties-merging : README (linear+0.1+1.01+0.1)"},  # fmt: skip
    notes=("--scale auto chooses on held-out data: pass --data (and --split)",),
))

_register(Preset(
    name="dare",
    command="soup",
    reproduces="DARE (Yu et al. 2024) as MergeLM searches it: λ by task arithmetic, then the drop rate 0.1-0.9 at it",
    values={"recipe": "dare", "drop": "0.1,0.3,0.5,0.7,0.9", "seed": 0, "scale": "auto",
            "scale_grid": "0.1,0.3,0.5,0.7,0.9,1.0"},
    sources={"recipe": "yule-BUAA/MergeLM : model_merging_methods/mask_weights_utils.py L19-35",
             "drop": "yule-BUAA/MergeLM : merge_plms_glue.py L297 (weight_mask_rate_range, with the task "
                     "arithmetic's scaling_coefficient fixed, L285-286)",
             "seed": "yule-BUAA/MergeLM : merge_plms_glue.py L71 (set_random_seed(seed=0))",
             "scale": "yule-BUAA/MergeLM : merge_plms_glue.py L218-228 (the task arithmetic search)",
             "scale_grid": "yule-BUAA/MergeLM : merge_plms_glue.py L219"},  # fmt: skip
    notes=("λ first, by task arithmetic without drops; then each drop rate at that λ; the first best is kept",
           "MergeLM's torch seed 0 draws differently from adapt's per-(seed, tensor, ingredient) draws",
           "both choices are on held-out data: pass --data (VTAB-1k: val200, never test)"),  # fmt: skip
))


from adapt import presets_prompts_adapters  # noqa: E402,F401 (registers VPT's, AdaptFormer's, RepAdapter's, DoRA's)


def get_preset(name: str, command: str) -> Preset:
    """The preset `name` for `command`, or an error naming the presets that exist for it."""
    import difflib

    preset = PRESETS.get(name)
    if preset is None or preset.command != command:
        names = [p.name for p in PRESETS.values() if p.command == command]
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        where = f" is for adapt {preset.command}" if preset is not None else " is not a preset"
        raise AdaptError(f"'{name}'{where}; {hint}adapt {command} takes: {', '.join(names)} (adapt presets lists them)")
    return preset
