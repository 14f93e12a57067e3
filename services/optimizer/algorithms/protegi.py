"""ProTeGi (Pryzant et al. 2023, "Automatic Prompt Optimization with Gradient Descent and Beam Search").

Per step, for each beam prompt: collect its errors on a random minibatch, ask the gradient
LLM for textual gradients (critiques), have the edit LLM edit the prompt along each gradient
and add Monte-Carlo paraphrases of the edits. Then a best-arm bandit (UCB, or successive
rejects) spends `bandit_budget` pulls, each scoring a candidate on `bandit_sample_size` fresh
questions, and keeps `beam_width` candidates. Beam members are scored on the run's fixed
validation questions; only those scores compete for the winner.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

from services.llm_eval.types import DecodingParams, EvaluationRequest
from services.optimizer.algorithms.base import (
    DEFAULT_FIDELITY,
    DEFAULT_INITIAL_PROMPT,
    Optimizer,
    best_comparable,
    extract_tagged,
    load_template,
    unique_new,
)

BANDITS = ("ucb", "successive-rejects")
PULLS_PER_CANDIDATE = 4  # default bandit budget: this many pulls per candidate


@dataclasses.dataclass(frozen=True)
class ProtegiConfig:
    iterations: int = 6
    beam_width: int = 4
    minibatch_size: int = 64
    num_gradients: int = 4
    errors_per_gradient: int = 4
    edits_per_gradient: int = 1
    paraphrases_per_edit: int = 2
    bandit: str = "ucb"
    bandit_budget: int = 0
    bandit_sample_size: int = 8
    ucb_c: float = 1.0
    meta_temperature: float = 1.0
    meta_max_tokens: int = 256
    gradient_model: str = ""
    edit_model: str = ""
    initial_prompts: tuple[str, ...] = (DEFAULT_INITIAL_PROMPT,)

    def __post_init__(self):
        for name in (
            "iterations",
            "beam_width",
            "minibatch_size",
            "num_gradients",
            "errors_per_gradient",
            "edits_per_gradient",
            "bandit_sample_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"protegi.{name} must be positive, got {getattr(self, name)}")
        if self.paraphrases_per_edit < 0 or self.bandit_budget < 0:
            raise ValueError("protegi.paraphrases_per_edit and protegi.bandit_budget must be >= 0")
        if self.bandit not in BANDITS:
            raise ValueError(f"protegi.bandit must be one of {BANDITS}, got {self.bandit!r}")
        if self.ucb_c < 0:
            raise ValueError(f"protegi.ucb_c must be >= 0, got {self.ucb_c}")
        if not self.initial_prompts or any(not p.strip() for p in self.initial_prompts):
            raise ValueError("protegi.initial_prompts must be non-empty strings")

    def budget(self, candidates: int) -> int:
        """Pulls for one selection over `candidates` arms: every arm at least once."""
        return max(self.bandit_budget or PULLS_PER_CANDIDATE * candidates, candidates)

    @classmethod
    def from_fields(cls, fields: dict) -> ProtegiConfig:
        """The config from proto fields or a stored run's config (older runs stored `ucb_rounds`,
        now `bandit_budget`'s job, and `ucb_sample_size`, now `bandit_sample_size`)."""
        fields = dict(fields)
        fields.pop("ucb_rounds", None)
        if "ucb_sample_size" in fields:
            fields["bandit_sample_size"] = fields.pop("ucb_sample_size")
        return cls(**fields)


# pull(arm, k) -> the arm's reward on its k-th pull (k = 0, 1, ...)
Pull = Callable[[int, int], float]


@dataclasses.dataclass
class ArmStats:
    """Mean reward and pull count per arm after a bandit run."""

    means: list[float]
    counts: list[int]

    def pull(self, arm: int, pull: Pull) -> None:
        reward = pull(arm, self.counts[arm])
        self.counts[arm] += 1
        self.means[arm] += (reward - self.means[arm]) / self.counts[arm]

    def top(self, arms: list[int], k: int) -> list[int]:
        """The k arms of `arms` with the highest means (ties: the earlier arm)."""
        return sorted(arms, key=lambda a: (-self.means[a], a))[:k]


def ucb_select(means: list[float], counts: list[int], t: int, c: float) -> int:
    """UCB arm choice: an unpulled arm first, else argmax mean + c * sqrt(ln t / n), where n counts
    the questions an arm has been scored on (ProTeGi's Algorithm 2)."""
    for i, n in enumerate(counts):
        if n == 0:
            return i
    scores = [m + c * math.sqrt(math.log(max(t, 1)) / n) for m, n in zip(means, counts, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


def ucb_bandit(
    arms: int, budget: int, keep: int, pull: Pull, c: float, sample_size: int = 1
) -> tuple[list[int], ArmStats]:
    """ProTeGi's UCB selection: `budget` pulls of `sample_size` questions chosen by UCB (counts
    in questions, as in the paper), then the `keep` best means."""
    stats = ArmStats([0.0] * arms, [0] * arms)
    for t in range(1, budget + 1):
        stats.pull(ucb_select(stats.means, [n * sample_size for n in stats.counts], t, c), pull)
    return stats.top(list(range(arms)), keep), stats


def successive_rejects(arms: int, budget: int, keep: int, pull: Pull) -> tuple[list[int], ArmStats]:
    """Successive rejects (Audibert & Bubeck 2010) stopped at `keep` arms. In phase k = 1..arms-keep
    every surviving arm is pulled up to n_k = floor(budget / (logbar * (arms + 1 - k))) times (at
    least once), then the lowest mean is rejected. logbar = keep / (keep + 1) + sum_{i=keep+1}^{arms}
    1/i (A&B's 1/2 + sum_{i=2}^{arms} 1/i when keep = 1) makes the phases spend the budget:
    sum_k n_k + keep * n_{arms-keep} <= budget, short of it by rounding only."""
    stats = ArmStats([0.0] * arms, [0] * arms)
    active = list(range(arms))
    logbar = keep / (keep + 1) + sum(1.0 / i for i in range(keep + 1, arms + 1))
    for k in range(1, arms - keep + 1):
        target = max(1, math.floor(budget / (logbar * (arms + 1 - k))))
        for arm in active:
            while stats.counts[arm] < target:
                stats.pull(arm, pull)
        active.remove(min(active, key=lambda a: (stats.means[a], -a)))
    return stats.top(active, keep), stats


class ProtegiOptimizer(Optimizer):
    name = "protegi"

    def search_steps(self) -> int:
        return self.config.iterations + 1

    def initial_state(self) -> dict:
        return {"step": 0, "history": [], "beam": list(self.config.initial_prompts)}

    def winner(self, state: dict) -> dict | None:
        """The best beam member on the fixed validation questions (bandit means never win; runs
        checkpointed before scores were marked hold only bandit means)."""
        return best_comparable([h for h in state["history"] if h.get("comparable")])

    def _meta(self, prompt: str, seed: int, model: str) -> str:
        params = DecodingParams(
            temperature=self.config.meta_temperature, max_tokens=self.config.meta_max_tokens, seed=seed
        )
        return self.llm.generate([prompt], params, model)[0]

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
                cfg.gradient_model,
            )
            for gradient in extract_tagged(critique, "start")[:1]:
                edit = self._meta(
                    load_template("protegi_edit").format(
                        prompt=prompt, errors=error_text, gradient=gradient, num_prompts=cfg.edits_per_gradient
                    ),
                    seed + 10 * g + 1,
                    cfg.edit_model,
                )
                for edited in extract_tagged(edit, "start")[: cfg.edits_per_gradient]:
                    new.append(edited)
                    for p in range(cfg.paraphrases_per_edit):
                        text = self._meta(
                            load_template("protegi_paraphrase").format(prompt=edited),
                            seed + 10 * g + 2 + p,
                            cfg.edit_model,
                        )
                        new.extend(extract_tagged(text, "start")[:1])
        return new

    def _select(self, candidates: list[str], rng: random.Random, size: int, state: dict) -> list[str]:
        """The bandit over candidates; pull k of any arm scores the k-th block of `bandit_sample_size`
        questions of this step's shuffled order, so arms are compared on the same questions."""
        cfg = self.config
        if len(candidates) <= cfg.beam_width:
            return list(candidates)
        order = rng.sample(range(size), size)
        s = min(cfg.bandit_sample_size, size)

        def pull(arm: int, k: int) -> float:
            return self._evaluate(candidates[arm], [order[(k * s + j) % size] for j in range(s)]).accuracy

        budget = cfg.budget(len(candidates))
        if cfg.bandit == "ucb":
            kept, stats = ucb_bandit(len(candidates), budget, cfg.beam_width, pull, cfg.ucb_c, s)
        else:
            kept, stats = successive_rejects(len(candidates), budget, cfg.beam_width, pull)
        for i in sorted(range(len(candidates)), key=lambda a: -stats.means[a]):
            self.record(state, candidates[i], stats.means[i], stats.counts[i] * s, comparable=False)
        self.emit(
            "progress",
            {"message": f"{cfg.bandit}: {sum(stats.counts)} pulls of {s} questions over {len(candidates)} candidates"},
        )
        return [candidates[i] for i in kept]

    def _score_beam(self, state: dict, size: int) -> None:
        """Score beam members not yet scored on the run's fixed validation questions."""
        fidelity = min(self.evaluation.fidelity or DEFAULT_FIDELITY, size)
        scored = {h["prompt"] for h in state["history"] if h.get("comparable")}
        for prompt in state["beam"]:
            if prompt not in scored:
                result = self.llm.evaluate(self.evaluation.request(prompt, fidelity))
                self.record(state, prompt, result.accuracy, result.num_evaluated)

    def search_step(self, state: dict) -> None:
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
        self._score_beam(state, size)
