"""OPRO (Yang et al. 2023, "Large Language Models as Optimizers") on a fixed evaluation minibatch.

Each step the meta-LLM sees the top-K scored instructions (ascending, scores bucketed) and a
few exemplar problems, and proposes new instructions at temperature 1.0; every proposal is
scored on the same questions so scores are comparable.
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

from services.common.settings import Settings, setting
from services.llm_eval.types import DecodingParams
from services.optimizer.algorithms.base import (
    DEBUG,
    DEBUG_FIDELITY,
    DEFAULT_FIDELITY,
    INITIAL_PROMPTS,
    MAX_META_TOKENS,
    Optimizer,
    best_comparable,
    check_prompts,
    extract_tagged,
    load_template,
    unique_new,
)
from services.optimizer.algorithms.registry import register


@dataclasses.dataclass(frozen=True)
class OproConfig(Settings):
    """OPRO's settings (Yang et al. 2023)."""

    section: ClassVar[str] = "opro"

    iterations: int = setting(
        10, "optimisation steps: meta-LLM proposal rounds after scoring the initial prompts", low=1, debug=2, high=10000
    )
    candidates_per_step: int = setting(8, "instructions the meta-LLM proposes per step", low=1, debug=2, high=256)
    top_k: int = setting(20, "best scored instructions shown to the meta-LLM", low=1, high=1000)
    num_buckets: int = setting(
        20, "score buckets the meta-prompt rounds scores to (20: multiples of 5)", low=1, high=1000
    )
    meta_temperature: float = setting(1.0, "meta-LLM sampling temperature", low=0.0, high=2.0)
    num_exemplars: int = setting(3, "exemplar problems shown in the meta-prompt", low=0, high=64)
    meta_max_tokens: int = setting(256, "max tokens of one meta-LLM proposal", low=1, high=MAX_META_TOKENS)
    initial_prompts: tuple[str, ...] = INITIAL_PROMPTS.field()
    debug: bool = DEBUG.field(
        help=f"small run: 2 steps of 2 proposals scored on {DEBUG_FIDELITY} questions (unset fields only)"
    )

    def validate(self):
        check_prompts(self.section, self.initial_prompts)

    def search_steps(self) -> int:
        return self.iterations + 1


def bucketize(score: float, num_buckets: int) -> int:
    """Score in [0, 1] -> 0..100 rounded to `num_buckets` buckets (20 buckets: multiples of 5)."""
    return round(round(score * num_buckets) * 100 / num_buckets)


def meta_prompt(history: list[dict], exemplars: list[tuple[str, str]], top_k: int, num_buckets: int) -> str:
    """The OPRO meta-prompt: top-K instructions by score, shown in ascending order."""
    top = sorted(history, key=lambda h: h["score"], reverse=True)[:top_k]
    entry, example = load_template("opro_history_entry"), load_template("opro_exemplar")
    history_text = "".join(
        entry.format(instruction=h["prompt"], score=bucketize(h["score"], num_buckets))
        for h in sorted(top, key=lambda h: h["score"])
    )
    exemplar_text = "".join(example.format(question=q, answer=a) for q, a in exemplars)
    return load_template("opro_meta").format(history=history_text, exemplars=exemplar_text)


@register("opro", OproConfig, summary="a meta-LLM proposes instructions from the scored history (Yang et al. 2023)")
class OproOptimizer(Optimizer):
    def fidelity(self) -> int:
        """Questions of the fixed evaluation minibatch: `fidelity`, else 20 in debug runs, else 261
        capped at the split size."""
        return self.validation_questions(DEFAULT_FIDELITY)

    def initial_state(self) -> dict:
        return {"step": 0, "history": [], "exemplars": []}

    def winner(self, state: dict) -> dict | None:
        """Every proposal is scored on the same questions, so the whole history competes."""
        return best_comparable(state["history"])

    def _score(self, state: dict, prompt: str) -> None:
        request = self.evaluation.request(prompt, self.fidelity(), include_details=not state["exemplars"])
        result = self.llm.evaluate(request)
        if not state["exemplars"] and result.results:
            rng = random.Random(self.evaluation.seed)
            picks = rng.sample(result.results, min(self.config.num_exemplars, len(result.results)))
            state["exemplars"] = [[r.question, r.gold] for r in picks]
        self.record(state, prompt, result.accuracy, result.num_evaluated)

    def search_step(self, state: dict) -> None:
        step = state["step"]
        if step == 0:
            for prompt in self.config.initial_prompts:
                self.emit("progress", {"message": f"evaluating initial prompt:\n{prompt}"})
                self._score(state, prompt)
        else:
            text = meta_prompt(state["history"], state["exemplars"], self.config.top_k, self.config.num_buckets)
            seed_base = self.evaluation.seed * 1_000_003 + step * 1_000
            proposals = []
            for i in range(self.config.candidates_per_step):
                params = DecodingParams(
                    temperature=self.config.meta_temperature, max_tokens=self.config.meta_max_tokens, seed=seed_base + i
                )
                proposals.extend(extract_tagged(self.llm.generate([text], params)[0], "ins")[:1])
            seen = {h["prompt"] for h in state["history"]}
            fresh = unique_new(proposals, seen)
            self.emit("progress", {"message": f"step {step}: {len(fresh)} new of {len(proposals)} proposals"})
            for prompt in fresh:
                self._score(state, prompt)
