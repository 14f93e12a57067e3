"""APE pool generation logic with a scripted meta-LLM (the real one runs in tests/integration)."""

import json

from services.common.text import instruction_lines
from services.common.types import Usage
from services.llm_eval.client import MeteredLlm
from services.optimizer.algorithms.ape import STYLE_CATEGORIES, generate_pool


class ScriptedLlm:
    """Returns the next scripted completion and remembers the prompts and temperatures."""

    def __init__(self, completions):
        self.completions, self.calls = list(completions), []

    def generate(self, prompts, params, role=None, model=""):
        from services.llm_eval.types import Completion, GenerateResult

        self.calls.append((prompts[0], params))
        return GenerateResult([Completion(self.completions.pop(0), 10, 10)], Usage(llm_calls=1), "scripted")


def test_style_categories_and_temperatures():
    temps = {name: spec["temperature"] for name, spec in STYLE_CATEGORIES.items()}
    assert temps == {
        "minimalist": 1.0,
        "direct_command": 0.9,
        "chain_of_thought": 0.8,
        "pedagogical": 0.9,
        "analytical": 0.8,
    }


def test_instruction_lines():
    text = 'Here are three instructions:\n1. Solve:\n- "Think step by step."\n\n' + "x" * 501 + "\n2) Check units."
    assert instruction_lines(text, 500) == ["Solve:", "Think step by step.", "Check units."]
    assert instruction_lines("Instruction 2: Add the totals.\n3.5 times the rate.", 500) == [
        "Add the totals.",
        "3.5 times the rate.",
    ]


def test_generate_pool_batches_dedups_and_caches(tmp_path):
    llm = ScriptedLlm(["Solve:\nAnswer:", "Answer:\nFind the result.", "Let's think step by step.\nSolve:"])
    cache = tmp_path / "ape.json"
    pool = generate_pool(MeteredLlm(llm, Usage()), 4, cache, batch_size=2, max_tokens=30)
    assert pool == ["Solve:", "Answer:", "Find the result.", "Let's think step by step."]
    assert json.loads(cache.read_text()) == pool
    prompts, params = zip(*llm.calls, strict=True)
    assert [p.temperature for p in params] == [1.0, 0.9, 0.8]  # categories take turns
    assert all(p.max_tokens == 60 for p in params)  # max_tokens per instruction x batch size
    assert "Ultra-short" in prompts[0] and "Step-by-step" in prompts[2]
    # A second call with a smaller pool is served from the cache without any LLM call.
    again = ScriptedLlm([])
    assert generate_pool(MeteredLlm(again, Usage()), 3, cache) == pool[:3] and again.calls == []


def test_generate_pool_stops_when_the_model_repeats_itself(tmp_path):
    llm = ScriptedLlm(["Solve:"] * 3)
    pool = generate_pool(MeteredLlm(llm, Usage()), 2, tmp_path / "ape.json", batch_size=2)
    assert pool == ["Solve:"] and len(llm.calls) == 3  # 3 x the needed batches, then gives up
