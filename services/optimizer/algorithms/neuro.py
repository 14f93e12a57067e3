"""The Neuro-Latent optimizer (seed 002) as a search: each step the trained rewriter (the
surrogate's NeuroService) rewrites the current best instruction `rewrites_per_step` times and
every new rewrite is scored on the run's fixed validation questions, so the whole history
competes (as in OPRO, whose meta-LLM the rewriter replaces)."""

from __future__ import annotations

import dataclasses

from services.optimizer.algorithms.base import (
    DEFAULT_FIDELITY,
    DEFAULT_INITIAL_PROMPT,
    MAX_PROMPT_CHARS,
    Optimizer,
    best_comparable,
    unique_new,
)
from services.optimizer.algorithms.opro import DEBUG_FIDELITY

DEBUG_DEFAULTS = {"iterations": 2, "rewrites_per_step": 2}  # OPRO's debug budget


@dataclasses.dataclass(frozen=True)
class NeuroOptimizerConfig:
    """iterations x rewrites_per_step rewrites of the incumbent; max_length and temperature are
    the seed's /optimize defaults (200 new tokens, 0.7); checkpoint '' uses the newest trained
    model on the surrogate."""

    iterations: int = 10
    rewrites_per_step: int = 8
    max_length: int = 200
    temperature: float = 0.7
    checkpoint: str = ""
    initial_prompts: tuple[str, ...] = (DEFAULT_INITIAL_PROMPT,)
    debug: bool = False

    @classmethod
    def from_fields(cls, fields: dict) -> NeuroOptimizerConfig:
        """With debug, unset fields take the debug sizes (2 steps x 2 rewrites)."""
        if fields.get("debug"):
            fields = {**DEBUG_DEFAULTS, **fields}
        return cls(**fields)

    def __post_init__(self):
        for name in ("iterations", "rewrites_per_step", "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"neuro.{name} must be positive, got {getattr(self, name)}")
        if self.rewrites_per_step > 16:
            raise ValueError(f"neuro.rewrites_per_step must be at most 16, got {self.rewrites_per_step}")
        if self.max_length > 1024:
            raise ValueError(f"neuro.max_length must be at most 1024, got {self.max_length}")
        if not 0 < self.temperature <= 2:
            raise ValueError(f"neuro.temperature must be in (0, 2], got {self.temperature}")
        if not self.initial_prompts or any(not p.strip() for p in self.initial_prompts):
            raise ValueError("neuro.initial_prompts must be non-empty strings")


class NeuroOptimizer(Optimizer):
    """Needs `rewriter`: the NeuroService client (`.optimize(raw, max_length, n, checkpoint,
    temperature, seed) -> (prompts, checkpoint)`)."""

    name = "neuro"

    def __init__(self, config, evaluation, llm, emit, rewriter=None):
        super().__init__(config, evaluation, llm, emit)
        self.rewriter = rewriter
        self._fidelity: int | None = None

    def fidelity(self) -> int:
        """`fidelity`, else 20 questions in debug runs, else OPRO's 261 capped at the split size."""
        if self._fidelity is None:
            if self.evaluation.fidelity:
                self._fidelity = self.evaluation.fidelity
            elif self.config.debug:
                self._fidelity = DEBUG_FIDELITY
            else:
                size = self.llm.split_size(self.evaluation.dataset, self.evaluation.split)
                self._fidelity = min(DEFAULT_FIDELITY, size)
        return self._fidelity

    def search_steps(self) -> int:
        return self.config.iterations + 1

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
