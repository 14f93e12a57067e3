"""ProTeGi (Pryzant et al. 2023, "Automatic Prompt Optimization with Gradient Descent and Beam Search").

Per step, for each beam prompt: collect its errors on a random minibatch, ask the meta-LLM
for textual gradients (critiques), edit the prompt along each gradient, add Monte-Carlo
paraphrases of the edits, then keep `beam_width` candidates chosen with a UCB bandit whose
pulls score a candidate on a few random questions.
"""

from __future__ import annotations

import dataclasses
import math
import random

from services.common.types import DecodingParams, EvaluationRequest
from services.optimizer.algorithms.base import (
    DEFAULT_INITIAL_PROMPT,
    Optimizer,
    extract_tagged,
    load_template,
    unique_new,
)


@dataclasses.dataclass(frozen=True)
class ProtegiConfig:
    iterations: int = 6
    beam_width: int = 4
    minibatch_size: int = 64
    num_gradients: int = 4
    errors_per_gradient: int = 4
    edits_per_gradient: int = 1
    paraphrases_per_edit: int = 2
    ucb_c: float = 2.0
    ucb_rounds: int = 0
    ucb_sample_size: int = 8
    meta_temperature: float = 1.0
    meta_max_tokens: int = 256
    initial_prompts: tuple[str, ...] = (DEFAULT_INITIAL_PROMPT,)

    def __post_init__(self):
        for name in (
            "iterations",
            "beam_width",
            "minibatch_size",
            "num_gradients",
            "errors_per_gradient",
            "edits_per_gradient",
            "ucb_sample_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"protegi.{name} must be positive, got {getattr(self, name)}")
        if self.paraphrases_per_edit < 0 or self.ucb_rounds < 0:
            raise ValueError("protegi.paraphrases_per_edit and protegi.ucb_rounds must be >= 0")
        if self.ucb_c < 0:
            raise ValueError(f"protegi.ucb_c must be >= 0, got {self.ucb_c}")
        if not self.initial_prompts or any(not p.strip() for p in self.initial_prompts):
            raise ValueError("protegi.initial_prompts must be non-empty strings")


def ucb_select(means: list[float], counts: list[int], t: int, c: float) -> int:
    """UCB1 arm choice: an unpulled arm first, else argmax mean + c * sqrt(ln t / n)."""
    for i, n in enumerate(counts):
        if n == 0:
            return i
    scores = [m + c * math.sqrt(math.log(max(t, 1)) / n) for m, n in zip(means, counts, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


class ProtegiOptimizer(Optimizer):
    name = "protegi"

    def total_steps(self) -> int:
        return self.config.iterations + 1

    def initial_state(self) -> dict:
        return {"step": 0, "history": [], "beam": list(self.config.initial_prompts)}

    def _meta(self, prompt: str, seed: int) -> str:
        params = DecodingParams(
            temperature=self.config.meta_temperature, max_tokens=self.config.meta_max_tokens, seed=seed
        )
        return self.llm.generate([prompt], params)[0]

    def _evaluate(self, prompt: str, indices: list[int], details: bool = False):
        return self.llm.evaluate(
            EvaluationRequest(
                instruction=prompt,
                dataset=self.evaluation.dataset,
                split=self.evaluation.split,
                question_indices=tuple(indices),
                params=self.evaluation.params(),
                include_details=details,
            )
        )

    def _expand(self, prompt: str, rng: random.Random, size: int, seed: int) -> list[str]:
        """Gradients -> edits -> paraphrases for one beam prompt."""
        cfg = self.config
        batch = rng.sample(range(size), min(cfg.minibatch_size, size))
        result = self._evaluate(prompt, batch, details=True)
        errors = [r for r in result.results if not r.correct]
        self.emit("progress", {"message": f"{len(errors)}/{len(batch)} errors for prompt:\n{prompt}"})
        if not errors:
            return []
        error_tpl = load_template("protegi_error")
        new = []
        for g in range(cfg.num_gradients):
            shown = rng.sample(errors, min(cfg.errors_per_gradient, len(errors)))
            error_text = "".join(error_tpl.format(question=e.question, response=e.response, gold=e.gold) for e in shown)
            critique = self._meta(
                load_template("protegi_gradient").format(prompt=prompt, errors=error_text, num_feedbacks=1),
                seed + 10 * g,
            )
            for gradient in extract_tagged(critique, "start")[:1]:
                edit = self._meta(
                    load_template("protegi_edit").format(
                        prompt=prompt, errors=error_text, gradient=gradient, num_prompts=cfg.edits_per_gradient
                    ),
                    seed + 10 * g + 1,
                )
                for edited in extract_tagged(edit, "start")[: cfg.edits_per_gradient]:
                    new.append(edited)
                    for p in range(cfg.paraphrases_per_edit):
                        text = self._meta(
                            load_template("protegi_paraphrase").format(prompt=edited), seed + 10 * g + 2 + p
                        )
                        new.extend(extract_tagged(text, "start")[:1])
        return new

    def _select(self, candidates: list[str], rng: random.Random, size: int, state: dict) -> list[str]:
        """UCB bandit over candidates; returns the beam_width best by mean reward."""
        cfg = self.config
        means, counts = [0.0] * len(candidates), [0] * len(candidates)
        rounds = max(cfg.ucb_rounds or len(candidates), len(candidates))
        for t in range(1, rounds + 1):
            arm = ucb_select(means, counts, t, cfg.ucb_c)
            sample = rng.sample(range(size), min(cfg.ucb_sample_size, size))
            reward = self._evaluate(candidates[arm], sample).accuracy
            counts[arm] += 1
            means[arm] += (reward - means[arm]) / counts[arm]
        order = sorted(range(len(candidates)), key=lambda i: means[i], reverse=True)
        for i in order:
            self.record(state, candidates[i], means[i], counts[i] * min(cfg.ucb_sample_size, size))
        return [candidates[i] for i in order[: cfg.beam_width]]

    def step(self, state: dict) -> dict:
        step = state["step"]
        rng = random.Random(self.evaluation.seed * 1_000_003 + step)
        size = self.llm.split_size(self.evaluation.dataset, self.evaluation.split)
        candidates = list(state["beam"])
        if step > 0:
            seen = set(candidates)
            for j, prompt in enumerate(state["beam"]):
                seed = self.evaluation.seed * 1_000_003 + step * 10_000 + j * 1_000
                candidates += unique_new(self._expand(prompt, rng, size, seed), seen)
        self.emit("progress", {"message": f"step {step}: selecting {self.config.beam_width} of {len(candidates)}"})
        state["beam"] = self._select(candidates, rng, size, state)
        state["step"] = step + 1
        return state
