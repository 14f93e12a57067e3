"""The Neuro-Latent service contract: the rewriter's configuration and user feedback (torch-free)."""

from __future__ import annotations

import dataclasses
import math

MAX_PROMPT_CHARS = 20_000  # a Neuro-Latent raw, rewritten or corrected prompt


@dataclasses.dataclass(frozen=True)
class Feedback:
    """What a user thought of a Neuro-Latent rewrite: its rating in [0, 1] (1: use it; 0: worse
    than the raw prompt) and, optionally, a better prompt they wrote instead."""

    raw_prompt: str
    optimized_prompt: str
    rating: float
    corrected_prompt: str = ""
    comment: str = ""

    def __post_init__(self):
        for name in ("raw_prompt", "optimized_prompt"):
            value = getattr(self, name)
            if not value.strip():
                raise ValueError(f"feedback.{name} must be a non-empty prompt")
            if len(value) > MAX_PROMPT_CHARS:
                raise ValueError(f"feedback.{name} is longer than {MAX_PROMPT_CHARS} characters")
        if not (math.isfinite(self.rating) and 0 <= self.rating <= 1):
            raise ValueError(f"feedback.rating must lie in [0, 1], got {self.rating}")
        if len(self.corrected_prompt) > MAX_PROMPT_CHARS or len(self.comment) > MAX_PROMPT_CHARS:
            raise ValueError(f"feedback.corrected_prompt and comment must be at most {MAX_PROMPT_CHARS} characters")


@dataclasses.dataclass(frozen=True)
class NeuroConfig:
    """The rewriter's parts and training (seed 002: RoBERTa-base -> Linear(d, 1024) -> ReLU ->
    Dropout(0.1) -> Linear(1024, d) -> Linear(d, 20 x d_gen) -> T5-small; its training script's
    batch 4, lr 1e-4, 3 + 3 epochs, KL weight 0.01 and InfoNCE temperature 0.07)."""

    encoder: str = "roberta-base"
    generator: str = "t5-small"
    soft_prompt_length: int = 20
    black_box_hidden: int = 1024
    dropout: float = 0.1
    kl_weight: float = 0.01
    temperature: float = 0.07
    generation_weight: float = 1.0  # 0: phase 1 is the intent MSE alone
    lr: float = 1e-4
    batch_size: int = 4
    phase1_epochs: int = 3
    phase2_epochs: int = 3
    max_input_tokens: int = 128
    max_teacher_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        for name in ("encoder", "generator"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must name a model")
        for name in ("soft_prompt_length", "black_box_hidden", "batch_size", "max_input_tokens", "max_teacher_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("phase1_epochs", "phase2_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.phase1_epochs + self.phase2_epochs < 1:
            raise ValueError("phase1_epochs + phase2_epochs must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("kl_weight", "generation_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def total_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs
