"""The training hyperparameters of every command that trains, checked when built (adapt.config).

Kept apart from the training loop so that the CLI can show their defaults without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapt.config import MAX_SEED, option, validate
from adapt.errors import AdaptError, term

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # ours -> accelerate's mixed_precision
TRACKERS = ("tensorboard", "csv", "wandb")  # --log-with, also "all" (adapt.tracking)
RESULT_FREE = ("workers", "log_with", "grad_checkpointing")  # options that change no result: a resumed run may change them
CONFIG_FILE = "config.yaml"  # a run's resolved options, in its folder
# How timm's cosine schedule is stepped (adapt.optimization.Schedule): per epoch as timm's train.py does (SSF,
# HST; the default: on digits it beat per-update stepping, benchmarks/results/schedule_digits.md), per epoch one
# epoch behind (SPT, NOAH, V-PETL Bench), or per optimizer update
LR_STEPPING = ("epoch", "epoch-lagged", "step")
# How a fresh classifier head starts (adapt.backbones.init_head). "trunc-normal" is what SSF's and SPT's
# official code give it (timm's ViT init: weight ~ N(0, 0.02) truncated, bias 0; dongzelian/SSF
# models/vision_transformer.py init_weights, ziplab/SPT model/vision_transformer_timm.py reset_classifier);
# "timm" keeps the model's own init (EfficientNet's fan-out uniform, whose first logits are large);
# "zeros" starts every logit at 0.
HEAD_INITS = ("trunc-normal", "timm", "zeros")
INTERPOLATIONS = ("bicubic", "bilinear")  # of the resize to the image size (adapt.data.transforms; timm's names)
TRAIN_CROPS = ("random-resized", "resize")  # how an augmented training image is sized (transforms.train_transform)
# Input normalisation (mean, std): the backbone's pretrained cfg ("backbone"), or one of these by name. SPT, NOAH
# and V-PETL Bench normalise the original ViT-B_16.npz with ImageNet's; SSF and HST with 0.5 ("inception").
NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "inception": ((0.5,) * 3, (0.5,) * 3)}


@dataclass
class TrainConfig:
    epochs: int = option(10, low=1, high=100_000)
    batch_size: int = option(32, low=1, high=65_536)  # the global batch: each of N processes takes batch_size / N
    drop_last: bool = option(False)  # drop the last partial training batch of an epoch (timm's loader does; SSF, HST)
    lr: float | None = option(None, low=0, low_open=True, high=10)  # None: the method's default
    weight_decay: float | None = option(None, low=0, high=10)  # None: the method's default
    warmup: float = option(0.1, low=0, high=1)  # fraction of the schedule's steps (updates or epochs) of `epochs`
    lr_stepping: str = option(LR_STEPPING[0], choices=LR_STEPPING)
    cooldown_epochs: int = option(0, low=0, high=100_000)  # epochs at min_lr after `epochs` (timm's cooldown)
    warmup_lr: float = option(0.0, low=0, high=10)  # where warmup starts
    min_lr: float = option(0.0, low=0, high=10)  # where the cosine ends
    label_smoothing: float = option(0.0, low=0, high=1, high_open=True)  # of the default cross-entropy
    # test every N epochs (and at the last) for the best-over-evaluations figure papers report; None: not
    eval_every: int | None = option(None, low=1, high=100_000)
    eval_from: int | None = option(None, low=1, high=100_000)  # the first epoch tested (None: eval_every), then every N
    eval_last: int = option(0, low=0, high=100_000)  # also test each of the last N epochs (SPT: 10)
    grad_accum: int = option(1, low=1, high=65_536)
    # keep only each block's input, run it again in backward (AdaptedModel.set_grad_checkpointing): same gradients
    grad_checkpointing: bool = option(False)
    precision: str | None = option(None, choices=(None, *PRECISIONS))  # None: accelerate's config and environment
    seed: int = option(0, low=0, high=MAX_SEED)
    workers: int = option(0, low=0, high=256)
    log_with: str | None = option(None)  # comma-separated TRACKERS, or "all"

    def __post_init__(self) -> None:
        validate(self, "training options")
        unknown = [n for n in self.trackers() if n not in (*TRACKERS, "all")]
        if unknown:
            raise AdaptError(f"{term('log_with')} {unknown[0]!r} is not a tracker: choose from {', '.join(TRACKERS)} or all")

    @property
    def total_epochs(self) -> int:
        """The epochs that run: the schedule's, then the cooldown's."""
        return self.epochs + self.cooldown_epochs

    def tests_at(self, epoch: int) -> bool:
        """Whether the periodic evaluation (eval_every) tests after `epoch` (1-based): from eval_from on every
        eval_every epochs, each of the last eval_last epochs, and the last."""
        if not self.eval_every:
            return False
        first = self.eval_from or self.eval_every
        periodic = epoch >= first and (epoch - first) % self.eval_every == 0
        return periodic or epoch > self.total_epochs - self.eval_last or epoch == self.total_epochs

    def trackers(self) -> list[str]:
        """The names in `log_with`, in order, without repeats."""
        return list(dict.fromkeys(n.strip() for n in (self.log_with or "").split(",") if n.strip()))
