"""Inverters: embeddings -> text, behind one base class.

Contract of `Inverter.invert`: for each target row return (text, cosine) where cosine is
between the target and the embedding of `text` by the same encoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

Encode = Callable[[Sequence[str]], np.ndarray]


class Inverter(ABC):
    """Maps embeddings back to text."""

    name: str

    @abstractmethod
    def invert(self, targets: np.ndarray, seed_texts: Sequence[str]) -> list[tuple[str, float]]:
        """targets: [batch, dim] -> one (text, cosine) per row."""


class NearestTextInverter(Inverter):
    """Returns the seed text whose embedding is closest (cosine) to each target.

    This is the retrieval step that LLM-guided inversion starts from; generating new
    candidates between known texts is not implemented yet.
    """

    name = "nearest-text"

    def __init__(self, encode: Encode):
        self.encode = encode

    def invert(self, targets, seed_texts):
        if not seed_texts:
            raise ValueError("seed_texts must not be empty for the nearest-text inverter")
        candidates = self.encode(list(seed_texts))
        if candidates.shape[1] != targets.shape[1]:
            raise ValueError(f"embeddings have dimension {targets.shape[1]}, the encoder gives {candidates.shape[1]}")
        norms = np.linalg.norm(targets, axis=1, keepdims=True)
        cosines = (targets / np.maximum(norms, 1e-12)) @ (
            candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
        ).T
        best = cosines.argmax(axis=1)
        return [(seed_texts[j], float(cosines[i, j])) for i, j in enumerate(best)]
