"""Hyperband schedule and successive halving with pluggable proposals (seed 000, HbBoPs-style).

Logic over instruction indices: `evaluate(index, fidelity) -> error rate` and a `Proposer`
choosing which instructions enter a bracket. LIPO proposes with a GP (`GpProposer`: BO over
the surrogate service); the bench also runs it with random proposals and as plain successive
halving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from services.common.errors import NotFoundError
from services.surrogate.types import GpTraining


@dataclasses.dataclass(frozen=True)
class HyperbandSchedule:
    """r = nvalid / bmin, smax = floor(log r / log eta), B = (smax + 1) * nvalid.

    Bracket s starts n = ceil((B / nvalid) * eta^s / (s + 1)) instructions; stage i keeps
    n_i = floor(n * eta^-i) at b_i = floor(nvalid * eta^(i - s)) questions (Li et al.'s
    Hyperband, r_i = R eta^(i - s)), so every bracket ends at full fidelity nvalid and the most
    aggressive bracket (s = smax) starts at floor(nvalid / eta^smax), which lies in
    [bmin, eta * bmin): the seed's "bmin to full fidelity" with b_i = bmin * eta^i up to rounding.
    (HbBoPs' floor(floor(nvalid eta^-s) eta^i) ends below nvalid, e.g. at 1280 of 1319.)
    """

    nvalid: int
    bmin: int = 10
    eta: float = 2.0

    def __post_init__(self):
        if self.bmin <= 0:
            raise ValueError(f"bmin must be positive, got {self.bmin}")
        if self.nvalid < self.bmin:
            raise ValueError(f"nvalid ({self.nvalid}) must be >= bmin ({self.bmin})")
        if self.eta <= 1:
            raise ValueError(f"eta must be > 1, got {self.eta}")

    @property
    def smax(self) -> int:
        return math.floor(math.log(self.nvalid / self.bmin) / math.log(self.eta) + 1e-9)

    @property
    def budget(self) -> int:
        return (self.smax + 1) * self.nvalid

    def bracket(self, s: int) -> list[tuple[int, int]]:
        """Stages (n_i instructions, b_i questions) of bracket s."""
        if not 0 <= s <= self.smax:
            raise ValueError(f"bracket s must be in [0, {self.smax}], got {s}")
        n = math.ceil(self.budget / self.nvalid * self.eta**s / (s + 1) - 1e-9)
        return [
            (
                max(1, math.floor(n * self.eta**-i + 1e-9)),
                math.floor(self.nvalid * self.eta ** (i - s) + 1e-9),
            )
            for i in range(s + 1)
        ]

    def brackets(self) -> list[int]:
        """Bracket indices in run order, smax down to 0."""
        return list(range(self.smax, -1, -1))


@dataclasses.dataclass
class Evaluation:
    index: int
    fidelity: int
    error: float


class Proposer(ABC):
    """Chooses `count` instructions from `candidates` for a new bracket, given all evaluations so far."""

    @abstractmethod
    def propose(
        self, candidates: Sequence[int], count: int, history: Sequence[Evaluation], rng: random.Random
    ) -> list[int]: ...


class RandomProposer(Proposer):
    def propose(self, candidates, count, history, rng):
        return rng.sample(list(candidates), min(count, len(candidates)))


def high_fidelity(history: Sequence[Evaluation], threshold: float) -> dict[int, Evaluation]:
    """Each instruction's evaluation at its highest fidelity, for those evaluated at >= threshold questions."""
    best: dict[int, Evaluation] = {}
    for e in history:
        if e.fidelity >= threshold and (e.index not in best or e.fidelity >= best[e.index].fidelity):
            best[e.index] = e
    return best


def incumbent(history: Sequence[Evaluation], fidelity: int) -> Evaluation | None:
    """The lowest-error evaluation at exactly `fidelity` (full fidelity: HbBoPs takes the incumbent
    from top-fidelity evaluations only), or None before any exists."""
    top = [e for e in history if e.fidelity == fidelity]
    return min(top, key=lambda e: e.error) if top else None


def run_bracket(
    schedule: HyperbandSchedule,
    s: int,
    pool_size: int,
    evaluate: Callable[[int, int], float],
    proposer: Proposer,
    history: list[Evaluation],
    rng: random.Random,
    on_stage: Callable[[int, int, int], None] = lambda stage, n, b: None,
) -> list[Evaluation]:
    """Successive halving over one bracket; appends every evaluation to `history` and returns
    this bracket's evaluations. The bracket's first stage is capped at the pool size."""
    stages = schedule.bracket(s)
    chosen = proposer.propose(range(pool_size), min(stages[0][0], pool_size), history, rng)
    done: list[Evaluation] = []
    for stage, (n_i, b_i) in enumerate(stages):
        survivors = chosen[: max(1, min(n_i, len(chosen)))]
        on_stage(stage, len(survivors), b_i)
        scored = []
        for index in survivors:
            evaluation = Evaluation(index, b_i, evaluate(index, b_i))
            history.append(evaluation)
            done.append(evaluation)
            scored.append(evaluation)
        if stage + 1 < len(stages):
            chosen = [e.index for e in sorted(scored, key=lambda e: e.error)]
    return done


class GpSurrogate(Protocol):
    """What BO proposals need from the surrogate service (its client or `SurrogateEngine`)."""

    def fit(self, train_x, train_y, vae_id: str = "", minimize: bool = False, training=None, owner: str = ""): ...
    def log_ei(self, model_id: str, x, best_f: float | None = None) -> np.ndarray: ...
    def delete(self, model_id: str) -> None: ...


MIN_GP_POINTS = 4  # HbBoPs: BO proposals start once 4 instructions have high-fidelity evaluations


class GpProposer(Proposer):
    """BO proposals for Hyperband: LogEI of a deep-kernel GP fitted on high-fidelity evaluations
    ranks the candidates; each pick is random with probability `random_prob` (interleaving).
    Proposals are random until MIN_GP_POINTS instructions have high-fidelity evaluations."""

    def __init__(
        self,
        surrogate: GpSurrogate,
        embeddings: np.ndarray,
        vae_id: str,
        threshold: float,
        random_prob: float,
        training: GpTraining,
        owner: str = "",
    ):
        self.surrogate, self.embeddings, self.vae_id = surrogate, embeddings, vae_id
        self.threshold, self.random_prob, self.training, self.owner = threshold, random_prob, training, owner
        self.fits = 0
        self._fitted: tuple[frozenset, str] | None = None

    def model_for(self, history: Sequence[Evaluation]) -> str | None:
        """A GP on the high-fidelity data (refitted only when that data changed); None below MIN_GP_POINTS."""
        data = {i: e.error for i, e in high_fidelity(history, self.threshold).items()}
        if len(data) < MIN_GP_POINTS:
            return None
        key = frozenset(data.items())
        if self._fitted is None or self._fitted[0] != key:
            indices = sorted(data)
            fit = self.surrogate.fit(
                self.embeddings[indices], [data[i] for i in indices], self.vae_id, True, self.training, self.owner
            )
            if self._fitted is not None:  # the superseded GP is no longer needed
                with contextlib.suppress(NotFoundError):
                    self.surrogate.delete(self._fitted[1])
            self._fitted = (key, fit.model_id)
            self.fits += 1
        return self._fitted[1]

    def propose(self, candidates, count, history, rng):
        candidates = list(candidates)
        model_id = self.model_for(history)
        if model_id is None:
            return rng.sample(candidates, min(count, len(candidates)))
        scores = self.surrogate.log_ei(model_id, self.embeddings[candidates])
        ranked = [candidates[i] for i in np.argsort(-np.asarray(scores), kind="stable")]
        picks: list[int] = []
        remaining = set(candidates)
        for _ in range(min(count, len(candidates))):
            if rng.random() < self.random_prob:
                choice = rng.choice(sorted(remaining))
            else:
                choice = next(c for c in ranked if c in remaining)
            picks.append(choice)
            remaining.discard(choice)
        return picks
