"""The Neuro-Latent requests, checked and read into domain values."""

from __future__ import annotations

import math

from services.common.errors import require
from services.neuro.types import MAX_PROMPT_CHARS, Feedback

MAX_NEW_TOKENS, MAX_SEQUENCES = 1024, 16


def parse_optimize(request) -> dict:
    """Optimize's fields, checked (INVALID_ARGUMENT naming the field); unset fields take the
    seed's values (max_length 200, one sequence, temperature 0.7)."""
    require(bool(request.raw_prompt.strip()), "raw_prompt must be a non-empty prompt")
    require(len(request.raw_prompt) <= MAX_PROMPT_CHARS, f"raw_prompt is longer than {MAX_PROMPT_CHARS} characters")
    max_length = request.max_length if request.HasField("max_length") else 200
    require(1 <= max_length <= MAX_NEW_TOKENS, f"max_length must be in [1, {MAX_NEW_TOKENS}], got {max_length}")
    n = request.num_return_sequences if request.HasField("num_return_sequences") else 1
    require(1 <= n <= MAX_SEQUENCES, f"num_return_sequences must be in [1, {MAX_SEQUENCES}], got {n}")
    temperature = request.temperature if request.HasField("temperature") else 0.7
    require(
        math.isfinite(temperature) and temperature > 0, f"temperature must be a finite number > 0, got {temperature}"
    )
    return {
        "raw": request.raw_prompt,
        "max_new_tokens": max_length,
        "n": n,
        "temperature": temperature,
        "seed": request.seed,
    }


def feedback_from_proto(message) -> Feedback:
    return Feedback(
        message.raw_prompt, message.optimized_prompt, message.rating, message.corrected_prompt, message.comment
    )
