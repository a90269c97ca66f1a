"""Perceptual initialization: align a vision encoder with human similarity judgements first.

As in the paper, the default starts from a random initialisation (`source="random"`): the
pipeline is random init -> perceptual alignment on NIGHTS triplets -> the user's own training
(`adapt tune --method full --weights init.safetensors`). Starting from pretrained weights
(`source="pretrained"`, the backbone's own: embedded for Lite0, a hub folder's; or a weights file)
is perceptual fine-tuning, a different thing: the paper contrasts the two, and DreamSim does it (LoRA
r 16, alpha 32, dropout 0.2 on the qkv of a pretrained DINO ViT-B/16: the dreamsim-nights preset).

The backbone embeds a reference and two distortions (pooled features, no head); with
cosine distances d_a = d(ref, a), d_b = d(ref, b), a hinge loss with margin 0.05 pushes
the difference towards the human choice: relu(margin - y (d_b - d_a)), y = +1 when people
chose a, -1 when they chose b (0 on a tie). Agreement is reported per split (NIGHTS' test in
two parts, test_imagenet and test_no_imagenet, as DreamSim does, and both together as `nights_total`,
the figure DreamSim's README reports) two ways: the 2AFC score,
exactly DreamSim's (evaluation/score.py: (d0<d1)(1-p) + (d1<d0)p + (d0==d1)0.5 with p the
share of voters who chose the right image, i.e. the share of voters who agree with the
model's pick), the headline; and the majority accuracy (1 when the model picks the
majority's image, 0.5 when the model or the vote is tied). On unanimous triplets, which
is all DreamSim keeps, the two are equal. Any tune method can
do the training (full by default); what it learned is merged, so the output is a plain
backbone state dict that every command accepts as --weights.

The recipe (`AlignmentConfig`) is DreamSim's by default: Adam with betas (0.5, 0.999),
lr 3e-4, no weight decay, batch 32, 8 epochs, margin 0.05 (ssundaram21/dreamsim
training/train.py `configure_optimizers`, configs/train_single_model_lora.yaml). After
every epoch the val split is scored, and the epoch with the best val 2AFC is what is
written (early stopping: `patience` epochs without a better one end the run).

BatchNorm backbones (DreamSim's are ViTs, with LayerNorm only, so its recipe is silent here)
align with their running statistics frozen by default (`norm_statistics="frozen"`): the
network scored before is then the one that trains and is written. With batch statistics
("batch", as ordinary fine-tuning), re-estimating the statistics on the triplet images alone,
no weight changed, took a random Lite0's val 2AFC from 68.7% to 60.3% on the 2,000-triplet
fixture, and eight epochs of alignment never won it back (64.4% at best); with them frozen
the same alignment raised it to 72.1% (held-out test 68.9 -> 71.6 and 69.5 -> 71.1). The
downstream run (`adapt tune --method full`) then re-estimates them as usual.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from adapt.backbones import EMBEDDED_WEIGHTS, RANDOM_WEIGHTS, create_backbone, default_weights, preprocessing, resolve_backbone
from adapt.checkpoint import save_tensors_atomic
from adapt.config import MAX_SEED, build, option
from adapt.data.transforms import eval_transform
from adapt.data.triplets import TripletDataset, load_triplets
from adapt.errors import AdaptError
from adapt.methods import count_trainable, create_method
from adapt.methods.norms import freeze_norm_statistics
from adapt.outputs import writing_file
from adapt.devices import make_accelerator
from adapt.optimization import parameter_groups
from adapt.progress import Steps

MARGIN = 0.05
PRETRAINED = "pretrained"  # source: the backbone's own pretrained weights (embedded for Lite0, a hub folder's)
TOTAL = "nights_total"  # every test split together, weighted by triplets (DreamSim's headline test figure)


@dataclass
class AlignmentConfig:
    """How the alignment trains; the defaults are DreamSim's single-backbone recipe (module docstring)."""

    epochs: int = option(8, low=1, high=100_000)
    lr: float = option(3e-4, low=0, low_open=True, high=10)
    weight_decay: float = option(0.0, low=0, high=10)
    batch_size: int = option(32, low=1, high=65_536)
    optimizer: str = option("adam", choices=("adam", "adamw"))  # adam: DreamSim's; adamw: decoupled decay
    betas: tuple[float, float] = (0.5, 0.999)
    margin: float = option(MARGIN, low=0, high=2)
    patience: int | None = option(None, low=1, high=100_000)  # epochs without a better val 2AFC before stopping
    # BatchNorm running statistics: "frozen" keeps the start's, so the network scored before is the one trained,
    # scored after and written; "batch" normalizes by batch statistics and updates them (ordinary fine-tuning)
    norm_statistics: str = option("frozen", choices=("frozen", "batch"))
    seed: int = option(0, low=0, high=MAX_SEED)

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise AdaptError(f"betas must be two numbers in [0, 1), got {self.betas!r}")

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        kind = torch.optim.Adam if self.optimizer == "adam" else torch.optim.AdamW
        return kind(parameter_groups(model, self.weight_decay), lr=self.lr, betas=tuple(self.betas))


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(x, y, dim=-1)


def hinge_loss(d_a: torch.Tensor, d_b: torch.Tensor, p_a: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """Mean of relu(margin - y (d_b - d_a)), y = sign(p_a - 0.5): +1 if people chose a."""
    y = torch.sign(p_a - 0.5)
    return F.relu(margin - y * (d_b - d_a)).mean()


def two_afc(d_a: torch.Tensor, d_b: torch.Tensor, p_a: torch.Tensor) -> torch.Tensor:
    """Per triplet, DreamSim's 2AFC score: the share of voters agreeing with the model's choice
    (0.5 when it cannot choose). p_a is the share who chose a, the left image."""
    return torch.where(d_a < d_b, p_a, torch.where(d_a > d_b, 1.0 - p_a, torch.full_like(p_a, 0.5)))


def majority_accuracy(d_a: torch.Tensor, d_b: torch.Tensor, p_a: torch.Tensor) -> torch.Tensor:
    """Per triplet: 1 if the model picks the majority's image, 0 if not, 0.5 when the model or the vote is tied
    (DreamSim's training accuracy, not its evaluation score)."""
    majority = torch.where(p_a > 0.5, 1.0, torch.where(p_a < 0.5, 0.0, 0.5)).to(p_a.dtype)
    return two_afc(d_a, d_b, majority)


def distances(model: nn.Module, ref: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features = model(torch.cat([ref, a, b]))
    f_ref, f_a, f_b = features.chunk(3)
    return cosine_distance(f_ref, f_a), cosine_distance(f_ref, f_b)


@dataclass(frozen=True)
class TwoAFC:
    score: float  # DreamSim's 2AFC score: the mean share of voters agreeing with the model's pick
    majority_accuracy: float  # how often the model picks the majority's image
    triplets: int


@torch.no_grad()
def evaluate_two_afc(model: nn.Module, dataset: TripletDataset, accelerator: Accelerator, batch_size: int = 32) -> TwoAFC:
    """DreamSim's 2AFC score and the majority accuracy over a split."""
    was_training = model.training
    model.eval()
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size))
    scores, majorities = [], []
    for ref, a, b, p_a in loader:
        d_a, d_b = distances(model, ref, a, b)
        scores.append(accelerator.gather_for_metrics(two_afc(d_a, d_b, p_a.float())))
        majorities.append(accelerator.gather_for_metrics(majority_accuracy(d_a, d_b, p_a.float())))
    model.train(was_training)
    return TwoAFC(float(torch.cat(scores).mean()), float(torch.cat(majorities).mean()), len(dataset))


def with_total(scores: dict[str, TwoAFC]) -> dict[str, TwoAFC]:
    """The scores, and with two or more test splits their union's (each score is a mean over triplets)."""
    tests = [score for name, score in scores.items() if name.startswith("test")]
    if len(tests) < 2:
        return scores
    count = sum(t.triplets for t in tests)
    total = TwoAFC(sum(t.score * t.triplets for t in tests) / count,
                   sum(t.majority_accuracy * t.triplets for t in tests) / count, count)  # fmt: skip
    return {**scores, TOTAL: total}


def evaluated_splits(names: list[str]) -> list[str]:
    """val and every test split (test_imagenet, test_no_imagenet, …); train when there are none."""
    chosen = [n for n in names if n == "val"] + sorted(n for n in names if n.startswith("test"))
    return chosen or ["train"]


@dataclass
class PerceptualResult:
    before: dict[str, TwoAFC]  # per evaluation split, before training
    after: dict[str, TwoAFC]
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    trainable_params: int = 0
    source: str = RANDOM_WEIGHTS  # where the backbone started: random, embedded or a weights file
    val_scores: list[float] = field(default_factory=list)  # the val 2AFC after each epoch
    best_epoch: int = 0  # the epoch that was written (1-based)


def perceptual_init(
    data: str,
    out: str | Path,
    backbone: str,
    source: str = RANDOM_WEIGHTS,
    method: str = "full",
    config: AlignmentConfig | dict[str, Any] | None = None,
    image_size: int | None = None,
    overwrite: bool = False,
    record: dict[str, Any] | None = None,
    on_epoch: Callable[[str], None] | None = None,
    method_options: dict[str, Any] | None = None,
) -> PerceptualResult:
    """Train `backbone` with `method` (and its `method_options`, as adapt tune takes them), starting from
    `source` ("random", the paper's setting; "pretrained", the backbone's own; "embedded"; or a weights
    file: perceptual fine-tuning), on the triplets of `data` by `config` (DreamSim's recipe by default, or a
    mapping of its fields), and write the best epoch on val, merged, to `out`.

    An existing `out` is replaced only with `overwrite`, and never when it is the input weights.
    `record` (the command's resolved options) goes into the file's metadata as `config` (YAML);
    `on_epoch` hears each epoch's mean hinge loss and val 2AFC."""
    if not isinstance(config, AlignmentConfig):
        config = build(AlignmentConfig, dict(config or {}), "alignment options")
    adapter = create_method(method, method_options)  # its options checked before anything is written
    if source == PRETRAINED:
        source = _pretrained_weights(backbone)
    inputs = [] if source in (RANDOM_WEIGHTS, EMBEDDED_WEIGHTS) else [source]
    with writing_file(out, overwrite, inputs=inputs):
        return _perceptual_init(data, out, backbone, source, adapter, config, image_size, record,
                                on_epoch or (lambda line: None))  # fmt: skip


def _pretrained_weights(backbone: str) -> str:
    """The backbone's own pretrained weights, or an error saying how to give them (nothing is downloaded)."""
    try:
        return default_weights(resolve_backbone(backbone))
    except AdaptError:
        raise AdaptError(f"{backbone} has no pretrained weights here (nothing is downloaded): give them as --from FILE "
                         "(DreamSim's: DINO ViT-B/16, e.g. timm's vit_base_patch16_224.dino saved as .safetensors)") from None


def _perceptual_init(data, out, backbone, source, adapter, config: AlignmentConfig, image_size, record,
                     on_epoch) -> PerceptualResult:  # fmt: skip
    splits = load_triplets(data)
    if not splits.get("train"):
        raise AdaptError(f"{data} has no train triplets")
    method = adapter.name
    if not adapter.mergeable:
        raise AdaptError(f"method {method} cannot be merged into a plain backbone; choose a mergeable one")
    model, info = create_backbone(backbone, source, num_classes=0, image_size=image_size, seed=config.seed)
    if config.norm_statistics == "frozen":  # before apply: the frozen norms then run lean (adapt.methods.lean)
        freeze_norm_statistics(model)
    model = adapter.apply(model)
    if count_trainable(model) == 0:
        raise AdaptError(f"method {method} trains nothing without a classifier head; choose another")
    defaults = preprocessing(backbone)
    transform = eval_transform(image_size or defaults.image_size, defaults.mean, defaults.std)
    datasets = {name: TripletDataset(triplets, transform) for name, triplets in splits.items()}
    evaluated = evaluated_splits(list(datasets))
    chooser = "val" if "val" in datasets else None  # the split the best epoch is chosen on

    accelerator = make_accelerator()
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(datasets["train"], batch_size=config.batch_size, shuffle=True, generator=generator)
    optimizer = config.make_optimizer(model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    def scored() -> dict[str, TwoAFC]:
        return with_total({s: evaluate_two_afc(model, datasets[s], accelerator) for s in evaluated})

    result = PerceptualResult(scored(), {}, trainable_params=count_trainable(model), source=info.weights)
    best, best_state, waited = float("-inf"), None, 0
    with Steps("perceptual alignment", config.epochs * len(loader), accelerator.is_main_process) as progress:
        for epoch in range(1, config.epochs + 1):
            model.train()
            total = 0.0
            progress.describe(f"perceptual alignment, epoch {epoch}/{config.epochs}")
            for step, (ref, a, b, p_a) in enumerate(loader, 1):
                loss = hinge_loss(*distances(model, ref, a, b), p_a.float(), config.margin)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                total += float(loss.detach())
                progress.advance(status=f"hinge loss {total / step:.4f}")
            result.losses.append(total / len(loader))
            if chooser is None:  # nothing to choose on: the last epoch
                result.best_epoch = epoch
                on_epoch(f"epoch {epoch}: hinge loss {result.losses[-1]:.4f}")
                continue
            result.val_scores.append(evaluate_two_afc(model, datasets[chooser], accelerator).score)
            on_epoch(f"epoch {epoch}: hinge loss {result.losses[-1]:.4f}  val 2AFC {result.val_scores[-1]:.1%}")
            if result.val_scores[-1] > best:
                best, result.best_epoch, waited = result.val_scores[-1], epoch, 0
                best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            else:
                waited += 1
                if config.patience is not None and waited >= config.patience:
                    break
    if best_state is not None:
        accelerator.unwrap_model(model).load_state_dict(best_state)
    result.after = scored()

    plain = adapter.merge(accelerator.unwrap_model(model))
    summary = {"source_backbone": backbone, "source_weights": info.weights, "data": data, "method": method,
               "method_options": adapter.options(),
               "recipe": asdict(config), "epochs_run": len(result.losses), "best_epoch": result.best_epoch,
               "val_twoafc_by_epoch": result.val_scores,
               "twoafc_before": {s: asdict(v) for s, v in result.before.items()},
               "twoafc_after": {s: asdict(v) for s, v in result.after.items()}}  # fmt: skip
    if accelerator.is_main_process:
        metadata = {"backbone": backbone, "perceptual_init": json.dumps(summary)}
        if record is not None:
            metadata["config"] = yaml.safe_dump(record, sort_keys=False)
        save_tensors_atomic(out, plain.state_dict(), metadata)
    return result
