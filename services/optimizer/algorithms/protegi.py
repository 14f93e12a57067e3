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
from typing import ClassVar

from services.common.settings import Settings, setting
from services.llm_eval.types import DecodingParams, EvaluationRequest
from services.optimizer.algorithms.base import (
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

BANDITS = ("ucb", "successive-rejects")
PULLS_PER_CANDIDATE = 4  # default bandit budget: this many pulls per candidate


@dataclasses.dataclass(frozen=True)
class ProtegiConfig(Settings):
    """ProTeGi's settings (Pryzant et al. 2023)."""

    section: ClassVar[str] = "protegi"

    iterations: int = setting(6, "beam search steps", low=1, high=10000)
    beam_width: int = setting(4, "prompts kept in the beam after each step", low=1, high=256)
    minibatch_size: int = setting(
        64, "questions per minibatch on which a beam prompt's errors are collected", low=1, high=10000
    )
    num_gradients: int = setting(4, "textual gradients (critiques) asked for per beam prompt", low=1, high=64)
    errors_per_gradient: int = setting(4, "failed questions shown to the gradient LLM per critique", low=1, high=64)
    edits_per_gradient: int = setting(1, "edited prompts written along each gradient", low=1, high=64)
    paraphrases_per_edit: int = setting(2, "Monte-Carlo paraphrases of each edited prompt", low=0, high=64)
    bandit: str = setting("ucb", "best-arm selection among the candidates", choices=BANDITS)
    bandit_budget: int = setting(
        0,
        f"bandit pulls per selection (0: {PULLS_PER_CANDIDATE} per candidate; at least one each)",
        low=0,
        high=1000000,
    )
    bandit_sample_size: int = setting(8, "fresh questions one bandit pull scores a candidate on", low=1, high=10000)
    ucb_c: float = setting(
        1.0, "UCB exploration constant (the bonus counts questions, as in the paper)", low=0.0, high=100.0
    )
    meta_temperature: float = setting(1.0, "temperature of the gradient and edit LLMs", low=0.0, high=2.0)
    meta_max_tokens: int = setting(256, "max tokens of one gradient, edit or paraphrase", low=1, high=MAX_META_TOKENS)
    gradient_model: str = setting("", "model that writes the textual gradients ('': the run's meta model)")
    edit_model: str = setting("", "model that edits and paraphrases prompts ('': the run's meta model)")
    initial_prompts: tuple[str, ...] = INITIAL_PROMPTS.field()

    def validate(self):
        check_prompts(self.section, self.initial_prompts)

    def search_steps(self) -> int:
        return self.iterations + 1

    def named_models(self) -> dict[str, str]:
        return {"protegi.gradient_model": self.gradient_model, "protegi.edit_model": self.edit_model}

    def budget(self, candidates: int) -> int:
        """Pulls for one selection over `candidates` arms: every arm at least once."""
        return max(self.bandit_budget or PULLS_PER_CANDIDATE * candidates, candidates)

    @classmethod
    def upgrade(cls, fields: dict) -> dict:
        """Older runs stored `ucb_rounds` (now `bandit_budget`'s job) and `ucb_sample_size` (now
        `bandit_sample_size`)."""
        fields.pop("ucb_rounds", None)
        if "ucb_sample_size" in fields:
            fields["bandit_sample_size"] = fields.pop("ucb_sample_size")
        return fields


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


@register("protegi", ProtegiConfig, summary="textual gradients, edits and paraphrases, beam search with a bandit")
class ProtegiOptimizer(Optimizer):
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
