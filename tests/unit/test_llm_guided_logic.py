"""LLM-guided inversion's loop with a scripted LLM and a bag-of-words encoder (pure logic;
the real LLM and embedder run in tests/integration/test_llm_guided_inversion.py)."""

import numpy as np

from services.common.types import Usage
from services.decoder.core import LlmGuidedInverter
from services.llm_eval.types import Completion, GenerateResult

VOCAB = "solve the problem step by step check units answer carefully".split()


def bag_of_words(texts):
    return np.array([[t.lower().count(w) for w in VOCAB] for t in texts], dtype=np.float32) + 1e-3


def test_keeps_the_closest_candidate_and_counts_usage():
    replies = iter(
        ["0.912: Solve the problem carefully.\n1. Check units.", "Instruction 3: Solve the problem step by step."]
    )
    prompts = []

    def generate(batch, params):
        prompts.append(batch[0])
        return GenerateResult([Completion(next(replies), 50, 20)], Usage(llm_calls=1, prompt_tokens=50), "scripted")

    inverter = LlmGuidedInverter(bag_of_words, generate, num_steps=2, beam_width=2, candidates=2)
    target = bag_of_words(["Solve the problem step by step."])
    [(text, cosine)], usage = inverter.invert(target, ["Answer carefully.", "Check the answer."])
    assert text == "Solve the problem step by step." and cosine > 0.999
    assert usage.llm_calls == 2 and usage.prompt_tokens == 100
    assert "Check the answer." in prompts[0] and "Solve the problem carefully." in prompts[1]  # the beam moved


def test_never_returns_worse_than_the_nearest_seed():
    inverter = LlmGuidedInverter(
        bag_of_words, lambda b, p: GenerateResult([Completion("units", 1, 1)], Usage(llm_calls=1), "x"), num_steps=1
    )
    target = bag_of_words(["check units carefully"])
    [(text, _)], _ = inverter.invert(target, ["Check units carefully.", "Solve."])
    assert text == "Check units carefully."
