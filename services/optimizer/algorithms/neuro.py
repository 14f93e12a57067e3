"""The Neuro-Latent optimizer (seed 002) as a search: each step the trained rewriter (the
surrogate's NeuroService) rewrites the current best instruction `rewrites_per_step` times and
every new rewrite is scored on the run's fixed validation questions, so the whole history
competes (as in OPRO, whose meta-LLM the rewriter replaces)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from services.common.settings import Settings, setting
from services.optimizer.algorithms.base import (
    DEBUG,
    DEBUG_FIDELITY,
    DEFAULT_FIDELITY,
    INITIAL_PROMPTS,
    MAX_PROMPT_CHARS,
    Optimizer,
    RunContext,
    best_comparable,
    check_prompts,
    unique_new,
)
from services.optimizer.algorithms.registry import register


@dataclasses.dataclass(frozen=True)
class NeuroOptimizerConfig(Settings):
    """iterations x rewrites_per_step rewrites of the incumbent; max_length and temperature are
    the seed's /optimize defaults (200 new tokens, 0.7)."""

    section: ClassVar[str] = "neuro"

    iterations: int = setting(10, "rewrite rounds, each of the current best instruction", low=1, debug=2, high=10000)
    rewrites_per_step: int = setting(8, "rewrites asked of the rewriter per round", low=1, high=16, debug=2)
    max_length: int = setting(200, "max new tokens of one rewrite (the seed's /optimize default)", low=1, high=1024)
    temperature: float = setting(0.7, "the rewriter's sampling temperature", above=0.0, high=2.0)
    checkpoint: str = setting("", "trained rewriter on the surrogate ('': the newest)")
    initial_prompts: tuple[str, ...] = INITIAL_PROMPTS.field()
    debug: bool = DEBUG.field(
        help=f"small run: 2 rounds of 2 rewrites scored on {DEBUG_FIDELITY} questions (unset fields)"
    )

    def validate(self):
        check_prompts(self.section, self.initial_prompts)

    def search_steps(self) -> int:
        return self.iterations + 1


@register(
    "neuro",
    NeuroOptimizerConfig,
    requires=("neuro",),
    summary="the trained soft-prompt rewriter rewrites the incumbent (seed 002)",
)
class NeuroOptimizer(Optimizer):
    """Needs `rewriter`: the NeuroService client (`.optimize(raw, max_length, n, checkpoint,
    temperature, seed) -> (prompts, checkpoint)`)."""

    def __init__(self, config, evaluation, llm, emit, rewriter=None):
        super().__init__(config, evaluation, llm, emit)
        self.rewriter = rewriter

    @classmethod
    def create(cls, config, evaluation, llm, emit, context: RunContext):
        return cls(config, evaluation, llm, emit, rewriter=context.models.neuro)

    def fidelity(self) -> int:
        """`fidelity`, else 20 questions in debug runs, else OPRO's 261 capped at the split size."""
        return self.validation_questions(DEFAULT_FIDELITY)

    def initial_state(self) -> dict:
        return {"step": 0, "history": [], "checkpoint": ""}

    def winner(self, state: dict) -> dict | None:
        return best_comparable(state["history"])

    def _score(self, state: dict, prompt: str) -> None:
        result = self.llm.evaluate(self.evaluation.request(prompt, self.fidelity()))
        self.record(state, prompt, result.accuracy, result.num_evaluated)

    def search_step(self, state: dict) -> None:
        step = state["step"]
        if step == 0:
            for prompt in self.config.initial_prompts:
                self.emit("progress", {"message": f"evaluating initial prompt:\n{prompt}"})
                self._score(state, prompt)
            return
        if self.rewriter is None:
            raise ValueError("the neuro algorithm needs the surrogate's NeuroService (optimizer surrogate_address)")
        incumbent = self.winner(state)["prompt"]
        rewrites, checkpoint = self.rewriter.optimize(
            incumbent,
            self.config.max_length,
            self.config.rewrites_per_step,
            self.config.checkpoint or state["checkpoint"],  # the model the run started with, throughout
            self.config.temperature,
            self.evaluation.seed * 1_000_003 + step,
        )
        state["checkpoint"] = checkpoint
        seen = {h["prompt"] for h in state["history"]}
        fresh = unique_new([r.strip()[:MAX_PROMPT_CHARS] for r in rewrites if r.strip()], seen)
        self.emit(
            "progress",
            {"message": f"step {step}: {len(fresh)} new of {len(rewrites)} rewrites of the incumbent:\n{incumbent}"},
        )
        for prompt in fresh:
            self._score(state, prompt)
