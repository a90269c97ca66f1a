"""Diagonal Fishers of soup ingredients, for Fisher merging (Matena & Raffel, NeurIPS 2022).

As mmatena/model_merging's model_merging/fisher.py computes it (`_compute_exact_fisher_for_batch` with
expectation_wrt_logits): the model in eval mode, and for each example x the expectation over the model's own
prediction, F += sum_y p(y|x) (d log p(y|x) / d theta)^2, divided by the number of examples. That is one
backward pass per class per example; the examples are the first `examples` of the split, in its order.

Each Fisher is written to a scratch file beside the soup's output (the merge then reads one ingredient's F of
one key at a time, so memory stays flat in the number of ingredients), with the L2 norm of F over all its tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from adapt.checkpoint import save_tensors_atomic
from adapt.errors import AdaptError, term
from adapt.merging.recipes import Fisher
from adapt.merging.state_model import StateModel
from adapt.merging.tensors import TensorFile
from adapt.progress import Steps


def estimate_fishers(recipe: Fisher, paths: Sequence[str | Path], data: Sequence[str], split: str, scratch: Path,
                     backbone: str | None = None, names: Sequence[str | Path] | None = None) -> None:  # fmt: skip
    """Each ingredient's Fisher on `split` of its data (one spec for all, or one per ingredient), into `scratch`;
    `recipe` then merges with them. names: the user's files, for messages, when `paths` were made from them."""
    data = list(data)
    if not data:
        raise AdaptError(f"recipe fisher estimates each ingredient's Fisher on its own data: pass {term('data')} "
                         f"(once for all, or once per ingredient) and the split ({term('split')}, default train)")  # fmt: skip
    if len(data) not in (1, len(paths)):
        raise AdaptError(f"{len(data)} {term('data')} for {len(paths)} ingredients: give one for all, or one per ingredient")
    scorer = StateModel.of(paths[0], backbone)
    recipe.diagonals, recipe.norms, recipe.estimates = [], [], []
    for number, path in enumerate(paths):
        spec = data[number if len(data) > 1 else 0]
        name = Path((names or paths)[number]).name
        file = TensorFile(path)
        scorer.load({k: file.get(k).float() if file.dtype(k).is_floating_point else file.get(k) for k in file.keys})
        dataset = scorer.dataset(spec, split, "the Fisher")
        diagonal = fisher_diagonal(scorer.model, set(file.keys), dataset, recipe.examples, f"Fisher of {name} on {spec}")
        norm = math.sqrt(sum(float(f.square().sum()) for f in diagonal.values()))
        if not norm > 0:
            raise AdaptError(f"the Fisher of {name} on {spec} is zero everywhere: nothing in it moves the predictions")
        out = scratch / f"fisher-{number}.safetensors"
        save_tensors_atomic(out, diagonal, {"data": spec, "norm": repr(norm)})
        recipe.diagonals.append(TensorFile(out))
        recipe.norms.append(norm)
        recipe.estimates.append({"ingredient": str((names or paths)[number]), "data": spec, "split": split,
                                 "examples": min(recipe.examples, len(dataset)), "norm": norm})  # fmt: skip


def fisher_diagonal(model: torch.nn.Module, keys: set[str], dataset: torch.utils.data.Dataset, examples: int,
                    what: str) -> dict[str, torch.Tensor]:  # fmt: skip
    """E_x sum_y p(y|x) (d log p(y|x) / d theta)^2 for each parameter of `model` named in `keys`."""
    params = dict(model.named_parameters())
    for key, param in params.items():
        param.requires_grad_(key in keys)
    params = {k: p for k, p in params.items() if k in keys}
    sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    count = min(examples, len(dataset))
    model.eval()
    with Steps(what, count) as progress:
        for index in range(count):
            image = dataset[index][0]
            log_probs = model(image.unsqueeze(0))[0].float().log_softmax(-1)
            probs = log_probs.detach().exp()
            for label in range(log_probs.numel()):
                grads = torch.autograd.grad(log_probs[label], list(params.values()), allow_unused=True,
                                            retain_graph=label < log_probs.numel() - 1)  # fmt: skip
                for key, grad in zip(params, grads):
                    if grad is not None:
                        sums[key].add_(grad.float().square(), alpha=float(probs[label]))
            progress.advance()
    return {k: s.div_(count) for k, s in sums.items()}
