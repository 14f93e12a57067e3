"""LLM-guided inversion (the decoder's embedded default) with the real CPU LLM and embedder."""

import json

import numpy as np
import pytest

from services.decoder.core import LlmGuidedInverter, NearestTextInverter, cosines
from services.llm_eval.types import ModelRole

pytestmark = pytest.mark.slow


def test_llm_guided_inversion_never_worse_than_nearest_and_reports_true_cosines(evaluator, embedder, datasets_dir):
    seeds = json.loads((datasets_dir / "prompts" / "ape_instructions_1000.json").read_text())[:30]
    target_text = "Work through the problem one step at a time, then write only the final number."
    target = embedder.encode([target_text])
    inverter = LlmGuidedInverter(
        embedder.encode, lambda prompts, params: evaluator.generate(prompts, params, ModelRole.META), candidates=3
    )
    [(text, cosine)], usage = inverter.invert(target, seeds, num_steps=2, beam_width=3)
    [(nearest_text, nearest)], _ = NearestTextInverter(embedder.encode).invert(target, seeds)
    assert usage.llm_calls == 2 and usage.completion_tokens > 0
    assert cosine == pytest.approx(float(cosines(target, embedder.encode([text]))[0, 0]), abs=1e-5)
    assert cosine >= nearest - 1e-6
    print(f"nearest seed {nearest:.4f}: {nearest_text}\nllm-guided  {cosine:.4f}: {text}")
    assert np.isfinite(cosine)
