"""The VTAB-1k presets of the methods every VTAB-1k table lists beside SSF, SPT and HST: VPT-Deep,
AdaptFormer, RepAdapter and DoRA (adapt.presets holds the registry and the others).

Where a method's own repository publishes its VTAB-1k run (RepAdapter) the preset is that run; where it
does not, the preset is the run behind the published table (V-PETL Bench's AdaptFormer, NOAH's VPT),
and where nobody published one (DoRA) it is LoRA's NOAH recipe with DoRA's layers, said in its notes.
"""

from __future__ import annotations

from adapt.presets import PRESETS, TEST_SELECTED, VIT_IN21K, VPETL_README, PaperFigures, Preset, _register, _scores

REPADAPTER = "luogen1996/RepAdapter"
NOAH_VPT = "ZhangYuanhan-AI/NOAH : configs/VPT/VTAB/slurm_train_vpt_vtab.sh"
VPETL_ADAPTFORMER = "synbol/Parameter-Efficient-Transfer-Learning-Benchmark : ImageClassification/scripts/run_vit_adaptformer.sh"
VPETL_MODEL = "…/models/vision_transformer_adaptformer.py"
LORA_ONLY = ("method", "rank", "alpha", "dropout", "targets", "option")  # what a LoRA preset sets for LoRA itself


def _run_of(preset: str) -> tuple[dict, dict]:
    """A LoRA preset's values and sources without its LoRA: the run (data, schedule, evaluation) it describes."""
    values, sources = PRESETS[preset].values, PRESETS[preset].sources
    return ({k: v for k, v in values.items() if k not in LORA_ONLY},
            {k: v for k, v in sources.items() if k not in LORA_ONLY})


_VPETL_RUN, _VPETL_SOURCES = _run_of("lora-vpetl-vtab")  # train_model_adapter.py is train_model_lora.py's twin
_NOAH_RUN, _NOAH_SOURCES = _run_of("lora-vtab")  # NOAH's one trainer runs LoRA, VPT and adapters
# V-PETL's adapter trainer reads LoRA's per-task yamls (configs/model_lora/vtab/<task>.yaml)
_VPETL_LORA_YAML = {task: {key: values[key] for key in ("augment", "label_smoothing")}
                    for task, values in PRESETS["lora-vpetl-vtab"].per_task.items()}  # fmt: skip

_register(Preset(
    name="repadapter-vtab",
    command="tune",
    reproduces="RepAdapter on VTAB-1k (Luo et al. 2023), repblock, dim 8, per-task scale: 73.84 mean in V-PETL's table",
    values={"method": "repadapter", "backbone": VIT_IN21K, "image_size": 224, "augment": "off",
            "interpolation": "bicubic", "normalize": "imagenet", "batch_size": 64, "drop_last": True, "epochs": 100,
            "warmup": 0.1, "warmup_lr": 1e-6, "min_lr": 1e-5, "lr_stepping": "epoch-lagged", "lr": 1e-3,
            "weight_decay": 1e-4, "drop_path": 0.1, "seed": 42, "label_smoothing": 0.0, "eval_every": 10},
    sources={"method": f"{REPADAPTER} : repadapter.py (set_RepAdapter, RepAdapter, set_RepWeight)",
             "backbone": f"{REPADAPTER} : train.py (create_model('vit_base_patch16_224_in21k', checkpoint_path="
                         "'./ViT-B_16.npz'))",
             "image_size": f"{REPADAPTER} : dataset.py L91-97 (Resize((224, 224)))",
             "augment": f"{REPADAPTER} : dataset.py L89-97 (Resize, ToTensor, Normalize for train and test)",
             "interpolation": f"{REPADAPTER} : dataset.py L91, L95 (interpolation=3: bicubic)",
             "normalize": f"{REPADAPTER} : dataset.py L64 (ImageNet mean/std)",
             "batch_size": f"{REPADAPTER} : dataset.py L64, L102 (batch_size=64)",
             "drop_last": f"{REPADAPTER} : dataset.py L102 (drop_last=True)",
             "epochs": f"{REPADAPTER} : train.py (train(..., epoch=100))",
             "warmup": f"{REPADAPTER} : train.py (CosineLRScheduler(t_initial=100, warmup_t=10, ...))",
             "warmup_lr": "same (warmup_lr_init=1e-6)", "min_lr": "same (lr_min=1e-5)",
             "lr_stepping": f"{REPADAPTER} : train.py (scheduler.step(ep) after each epoch: one behind)",
             "lr": f"{REPADAPTER} : train.py (--lr 1e-3; scripts/exp.sh passes none)",
             "weight_decay": f"{REPADAPTER} : train.py (--wd 1e-4)",
             "drop_path": f"{REPADAPTER} : train.py (drop_path_rate=0.1)",
             "seed": f"{REPADAPTER} : train.py (--seed 42)",
             "label_smoothing": f"{REPADAPTER} : train.py (torch.nn.CrossEntropyLoss())",
             "eval_every": f"{REPADAPTER} : train.py (ep % 10 == 9: epochs 10, ..., 100; the best kept)",
             "option": f"{REPADAPTER} : scripts/train_repblock.sh (method repblock, dim 8), configs/repblock/<task>.yaml "
                       "(scale), repadapter.py RepAdapter (groups 2, dropout 0.1)"},  # fmt: skip
    per_task={task: {"option": ["variant=repblock", "dim=8", "groups=2", "dropout=0.1", f"scale={scale}"]}
              for task, scale in {
        "cifar": 0.1, "caltech101": 5, "dtd": 1, "oxford_flowers102": 0.5, "oxford_iiit_pet": 0.1, "svhn": 10,
        "sun397": 0.1, "patch_camelyon": 1, "eurosat": 1, "resisc45": 5, "diabetic_retinopathy": 0.1,
        "clevr_count": 0.5, "clevr_dist": 0.1, "dmlab": 5, "kitti": 5, "dsprites_loc": 5, "dsprites_ori": 0.1,
        "smallnorb_azi": 10, "smallnorb_ele": 1}.items()},  # fmt: skip
    notes=("the official AdamW decays every trained tensor, biases too; adapt decays matrices only",
           "weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz",
           "adapt merge folds the adapters into qkv and fc1 exactly (set_RepWeight's re-parameterization)", TEST_SELECTED),
    paper=PaperFigures(f"{VPETL_README} L427 (the RepAdapter row)",
                       _scores("72.4 91.6 71.0 99.2 91.4 90.7 55.1 | 85.3 95.9 84.6 75.9 | "
                               "82.3 68.0 50.4 79.9 80.4 49.2 38.6 41.0"), plain_mean=73.84),  # fmt: skip
    weights="orig_in21k",
))

_register(Preset(
    name="adaptformer-vtab",
    command="tune",
    reproduces="AdaptFormer on VTAB-1k as V-PETL Bench runs it (bottleneck 8, per-task lr and weight decay): 72.32 mean",
    values={**_VPETL_RUN, "method": "adaptformer",
            "option": ["bottleneck=8", "scale=1.0", "layernorm=in", "dropout=0.1"], "eval_every": 10, "eval_from": 90},
    sources={**_VPETL_SOURCES, "method": VPETL_ADAPTFORMER,
             "lr": VPETL_ADAPTFORMER, "weight_decay": VPETL_ADAPTFORMER,
             "option": f"{VPETL_ADAPTFORMER} (topN=8); {VPETL_MODEL} L196-203, L265-266 (Adaptformer(dim, "
                       "down_dim=topN): adapter_scalar '1.0', layer norm 'in', dropout 0.1, init 'lora')",
             "eval_every": "…/train/train_model_adapter.py L58 (ep % 10 == 9 and ep > 80: epochs 90 and 100; the max)",
             "eval_from": "same"},  # fmt: skip
    per_task={task: {"lr": lr, "weight_decay": weight_decay, **_VPETL_LORA_YAML[task]} for task, (lr, weight_decay) in {
        "cifar": (0.01, 1.0), "caltech101": (0.006, 0.35), "dtd": (0.0032, 0.04), "oxford_flowers102": (0.05, 0.11),
        "oxford_iiit_pet": (0.0007, 0.8), "svhn": (0.001, 0.005), "sun397": (0.0017, 0.01),
        "patch_camelyon": (0.0072, 0.002), "eurosat": (0.06, 0.001), "resisc45": (0.01, 0.01),
        "diabetic_retinopathy": (0.004, 0.0003), "clevr_count": (0.0033, 0.01), "clevr_dist": (0.0018, 0.005),
        "dmlab": (0.009, 0.1), "kitti": (0.0072, 0.0001), "dsprites_loc": (0.003, 0.001), "dsprites_ori": (0.01, 0.05),
        "smallnorb_azi": (0.0062, 0.005), "smallnorb_ele": (0.0011, 0.0005)}.items()},  # fmt: skip
    notes=("AdaptFormer's own repository publishes no VTAB-1k run; this is V-PETL Bench's, whose adapter differs from "
           "the paper's in two defaults (scale 1.0, not 0.1; a LayerNorm on its input): --option scale=0.1 "
           "--option layernorm=none gives the paper's",
           "V-PETL's train_model_adapter.py reads LoRA's per-task yamls (configs/model_lora/vtab/<task>.yaml: "
           "augmentation, label smoothing, batch, epochs)",
           "V-PETL's AdamW decays every trained tensor, biases too; adapt decays matrices only",
           "weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz", TEST_SELECTED),
    paper=PaperFigures(f"{VPETL_README} L422 (the AdaptFormer row)",
                       _scores("70.8 91.2 70.5 99.1 90.9 86.6 54.8 | 83.0 95.8 84.4 76.3 | "
                               "81.9 64.3 49.3 80.3 76.3 45.7 31.7 41.1"), plain_mean=72.32),  # fmt: skip
    weights="orig_in21k",
))

# VPT's per-task prompt lengths (VPT-Deep, ViT-B/16, VTAB-1k). VPT's repository keeps its per-task values outside
# it (KMnP/vpt : README L138-140, a Drive folder); these are the lengths its paper's appendix gives, as copied into
# public VTAB configs. NOAH's VPT script takes the length as its --cfg (experiments/VPT/ViT-B_prompt_vpt_<N>.yaml).
VPT_TOKENS = {"cifar": 10, "caltech101": 10, "dtd": 10, "oxford_flowers102": 1, "oxford_iiit_pet": 1, "svhn": 50,
              "sun397": 5, "patch_camelyon": 100, "eurosat": 100, "resisc45": 10, "diabetic_retinopathy": 1,
              "clevr_count": 100, "clevr_dist": 200, "dmlab": 100, "kitti": 100, "dsprites_loc": 100,
              "dsprites_ori": 100, "smallnorb_azi": 200, "smallnorb_ele": 200}  # fmt: skip

_register(Preset(
    name="vpt-deep-vtab",
    command="tune",
    reproduces="VPT-Deep on VTAB-1k (Jia et al. 2022) as NOAH runs it, per-task prompt lengths: 69.43 mean",
    values={**_NOAH_RUN, "method": "vpt-deep", "normalize": "inception", "dropout": 0.1},
    sources={**_NOAH_SOURCES, "method": "KMnP/vpt : src/models/vit_prompt/vit.py (PromptedTransformer, deep prompts)",
             "normalize": f"{NOAH_VPT} (--inception: mean = std = 0.5)", "lr": NOAH_VPT, "weight_decay": NOAH_VPT,
             "dropout": f"{NOAH_VPT} (--drop_rate_prompt=0.1)",
             "option": "the lengths: the VPT paper's appendix (VPT_TOKENS above); ZhangYuanhan-AI/NOAH : "
                       "model/supernet_vision_transformer_timm.py L303-365 (its blocks keep their drop path)"},  # fmt: skip
    per_task={task: {"option": [f"tokens={tokens}", "encoder_drop_path=true"]} for task, tokens in VPT_TOKENS.items()},
    notes=("the prompt lengths are the VPT paper's per-task values, which VPT's repository does not hold (README "
           "L138-140 links them); NOAH's script takes one as its --cfg",
           "prompts start as VPT's code starts them (uniform +-sqrt(6 / (3 * 16 * 16 + 768))); NOAH's use "
           "xavier-uniform on a (1, N, 768) tensor and append them after the patches, which attention does not tell "
           "apart from after the class token",
           "NOAH's blocks keep their stochastic depth (0.1) around the prompts; VPT's own code runs the frozen encoder "
           "in eval mode (encoder_drop_path=false, adapt's default)",
           "weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz", TEST_SELECTED),
    paper=PaperFigures(f"{VPETL_README} L419 (the VPT-Deep row, as the VPT paper's Table)",
                       _scores("78.8 90.8 65.8 98.0 88.3 78.1 49.6 | 81.8 96.1 83.4 68.4 | "
                               "68.5 60.0 46.5 72.8 73.6 47.9 32.9 37.8"), plain_mean=69.43),  # fmt: skip
    weights="orig_in21k",
))

_register(Preset(
    name="dora-vtab",
    command="tune",
    reproduces="DoRA (Liu et al. 2024) on VTAB-1k under LoRA's NOAH recipe (rank 8 on the fused qkv, dropout 0.1)",
    values={**PRESETS["lora-vtab"].values, "method": "dora"},
    sources={**PRESETS["lora-vtab"].sources,
             "method": "ZhangYuanhan-AI/NOAH : its LoRA run (lora-vtab) with peft's LoraConfig(use_dora=True); "
                       "NVlabs/DoRA publishes no VTAB-1k run"},
    notes=("DoRA's paper and repository publish no VTAB-1k run: this is lora-vtab (NOAH's LoRA run) with DoRA's "
           "magnitude vector, so that the two compare under one recipe; there is no paper figure to reach",
           "weights: the original ViT-B_16.npz (ImageNet-21k), --weights ViT-B_16.npz", TEST_SELECTED),
    weights="orig_in21k",
))
