"""Seed 004's 25 metrics: their groups and targets, and the computations the trials use.

Each phase's trial computes its own group(s): vae -> VAE quality, scorer -> scorer quality,
gp -> GP quality, inference -> optimisation quality and end to end. `assess` reports every
value with its target and pass/fail (None where a metric has no bound or no value).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    group: str
    target: str  # as the seed writes it
    low: float | None = None  # value must be >= low (or > low when `strict`)
    high: float | None = None  # value must be <= high (or < high when `strict`)
    strict: bool = False
    description: str = ""

    def passed(self, value) -> bool | None:
        if value is None or (self.low is None and self.high is None):
            return None
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.strict else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.strict else value > self.high))


METRICS: tuple[Metric, ...] = (
    Metric("reconstruction_cosine", "vae", ">=0.93", low=0.93, description="Cosine similarity after encode/decode"),
    Metric("reconstruction_mse", "vae", "<=0.05", high=0.05, description="Mean squared error"),
    Metric("kl_divergence", "vae", "0.1-1.0", low=0.1, high=1.0, description="KL term for regularization"),
    Metric("retrieval_accuracy_at_8", "vae", ">=0.85", low=0.85, description="Can retrieve original from latent"),
    Metric("lipschitz_constant", "vae", "<10", high=10.0, strict=True, description="Smoothness of latent space"),
    Metric("percentile10_cosine", "vae", ">=0.70", low=0.70, description="Worst-case reconstruction"),
    Metric("ndcg_at_8", "scorer", ">=0.70", low=0.70, description="Ranking quality"),
    Metric("mrr", "scorer", ">=0.50", low=0.50, description="Mean reciprocal rank"),
    Metric("selection_loss", "scorer", "<2.0", high=2.0, strict=True, description="ListMLE loss"),
    Metric("exemplar_diversity", "scorer", ">0.3", low=0.3, strict=True, description="Pairwise distance"),
    Metric("exemplar_variance", "scorer", ">0", low=0.0, strict=True, description="Variance across iterations"),
    Metric("spearman_correlation", "gp", ">=0.40", low=0.40, description="Rank correlation"),
    Metric("rmse", "gp", "<0.05", high=0.05, strict=True, description="Root mean squared error"),
    Metric("calibration_error", "gp", "<0.10", high=0.10, strict=True, description="Confidence vs accuracy"),
    Metric("lengthscale_ratio", "gp", "0.5-2.0", low=0.5, high=2.0, description="Instruction/exemplar ratio"),
    Metric("nll_heldout", "gp", "minimize", description="Negative log-likelihood"),
    Metric("system_gap", "optimization", "<0.5", high=0.5, strict=True, description="Latent vs realized distance"),
    Metric("rejection_rate", "optimization", "<0.30", high=0.30, strict=True, description="Invalid samples ratio"),
    Metric("improvement_rate", "optimization", ">0.20", low=0.20, strict=True, description="Improving iterations"),
    Metric("best_error_rate", "optimization", "<0.085", high=0.085, strict=True, description="Minimum error achieved"),
    Metric("convergence_speed", "optimization", "<20", high=20, strict=True, description="Iterations to 90% best"),
    Metric("final_accuracy", "end_to_end", ">=91.5%", low=0.915, description="Full evaluation accuracy"),
    Metric("sample_efficiency", "end_to_end", "maximize", description="Accuracy per LLM call"),
    Metric("wall_clock_time", "end_to_end", "minimize", description="Total runtime (s)"),
    Metric(
        "gpu_memory_peak",
        "end_to_end",
        "<20GB",
        high=20.0,
        strict=True,
        description="Maximum VRAM usage (GiB): the model services' high-water marks at the end of the run, summed",
    ),
)
BY_NAME = {m.name: m for m in METRICS}


def assess(values: dict) -> list[dict]:
    """Each of the 25 metrics with its value (None where its phase did not run), target and pass/fail."""
    return [
        {
            "name": m.name,
            "group": m.group,
            "value": values.get(m.name),
            "target": m.target,
            "passed": m.passed(values.get(m.name)),
        }
        for m in METRICS
    ]


# ---------------------------------------------------------------- VAE quality


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def retrieval_at_k(decoded: np.ndarray, originals: np.ndarray, k: int = 8, own=None) -> float:
    """Share of decodings whose original (row `own[i]` of `originals`; default row i) is among the
    k originals nearest (cosine) to it."""
    own = np.arange(len(decoded)) if own is None else np.asarray(own)
    unit_d = decoded / np.maximum(np.linalg.norm(decoded, axis=1, keepdims=True), 1e-12)
    unit_o = originals / np.maximum(np.linalg.norm(originals, axis=1, keepdims=True), 1e-12)
    similarity = unit_d @ unit_o.T
    mine = similarity[np.arange(len(decoded)), own]
    rank = (similarity > mine[:, None]).sum(axis=1)  # originals strictly nearer than its own
    return float(np.mean(rank < k))


def lipschitz_estimate(z: np.ndarray, z_near: np.ndarray, decoded: np.ndarray, decoded_near: np.ndarray) -> float:
    """max ||dec(z) - dec(z')|| / ||z - z'|| over the given pairs (z' a small step from z)."""
    ratio = np.linalg.norm(decoded - decoded_near, axis=1) / np.maximum(np.linalg.norm(z - z_near, axis=1), 1e-12)
    return float(ratio.max())


# ---------------------------------------------------------------- scorer quality


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, k: int = 8) -> float:
    """NDCG@k of the ranking by `scores` against graded `relevance` (shifted to be >= 0), per row, averaged."""
    scores, relevance = np.atleast_2d(scores), np.atleast_2d(relevance)
    gains = relevance - relevance.min(axis=1, keepdims=True)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for s, g in zip(scores, gains, strict=True):
        top = np.argsort(-s, kind="stable")[:k]
        ideal = np.sort(g)[::-1][:k]
        best = float((ideal * discounts[: len(ideal)]).sum())
        values.append(float((g[top] * discounts[: len(top)]).sum()) / best if best > 0 else 1.0)
    return float(np.mean(values))


def ndcg_of_order(orders: list[list[int]], relevance: np.ndarray, k: int = 8) -> float:
    """NDCG@k of given rankings (each a list of item ids, best first), e.g. an MMR selection."""
    scores = np.full(np.atleast_2d(relevance).shape, -np.inf)
    for row, order in enumerate(orders):
        scores[row, order[:k]] = -np.arange(len(order[:k]), dtype=float)
    return ndcg_at_k(scores, relevance, k)


def mean_reciprocal_rank(scores: np.ndarray, relevance: np.ndarray) -> float:
    """Mean over rows of 1 / (the rank, by `scores`, of the first most relevant item: with ties
    at the top, the best-ranked of them)."""
    scores, relevance = np.atleast_2d(scores), np.atleast_2d(relevance)
    ranks = [
        1 + min(int(np.sum(s > s[j])) for j in np.flatnonzero(r == r.max()))
        for s, r in zip(scores, relevance, strict=True)
    ]
    return float(np.mean([1.0 / r for r in ranks]))


def list_mle(scores: np.ndarray, relevance: np.ndarray, k: int | None = None, tie_orders: int = 16) -> float:
    """Mean over rows of -log P(relevance's order | scores) under Plackett-Luce; with `k`, of its
    first k positions only, per position (the selection loss). Tied items may come in any order:
    the loss is averaged over `tie_orders` random orders of the ties (fixed seed). Random scores
    give about log(P) per position; scores that separate the relevance levels by wide margins
    approach the ties' own floor (log of the tie group's size per position)."""
    rng = np.random.default_rng(0)
    total = 0.0
    for s, r in zip(np.atleast_2d(scores), np.atleast_2d(relevance), strict=True):
        orders = 1 if len(np.unique(r)) == len(r) else tie_orders
        for _ in range(orders):
            shuffle = rng.permutation(len(r)) if orders > 1 else np.arange(len(r))
            ranked = s[shuffle][np.argsort(-r[shuffle], kind="stable")]
            terms = np.logaddexp.accumulate(ranked[::-1])[::-1] - ranked
            total += (float(np.sum(terms)) if k is None else float(np.mean(terms[:k]))) / orders
    return total / len(np.atleast_2d(scores))


def exemplar_diversity(embeddings: np.ndarray, chosen: list[int]) -> float:
    """Mean pairwise cosine distance among the chosen exemplars (0 for fewer than two)."""
    if len(chosen) < 2:
        return 0.0
    unit = embeddings[chosen] / np.maximum(np.linalg.norm(embeddings[chosen], axis=1, keepdims=True), 1e-12)
    upper = (unit @ unit.T)[np.triu_indices(len(chosen), k=1)]
    return float(np.mean(1.0 - upper))


def selection_variance(selections: list[list[int]], pool_size: int) -> float:
    """Mean over pool exemplars of the variance of 'selected' across selections (0 if all agree)."""
    chosen = np.zeros((len(selections), pool_size))
    for row, ids in enumerate(selections):
        chosen[row, ids] = 1.0
    return float(chosen.var(axis=0).mean())


# ---------------------------------------------------------------- GP quality


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""

    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def calibration_error(y, mean, std, levels=(0.5, 0.8, 0.9, 0.95)) -> float:
    """Mean |empirical coverage - nominal| of the central Gaussian intervals at `levels`."""
    y, mean, std = (np.asarray(v, dtype=float) for v in (y, mean, std))
    z = np.abs(y - mean) / np.maximum(std, 1e-12)
    gaps = []
    for level in levels:
        half_width = math.sqrt(2) * _erfinv(level)
        gaps.append(abs(float(np.mean(z <= half_width)) - level))
    return float(np.mean(gaps))


def _erfinv(x: float) -> float:
    """Inverse error function by bisection (the few levels the calibration check uses)."""
    low, high = 0.0, 6.0
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if math.erf(mid) < x else (low, mid)
    return (low + high) / 2


def gaussian_nll(y, mean, variance) -> float:
    """Mean negative log-likelihood of y under N(mean, variance)."""
    y, mean, variance = (np.asarray(v, dtype=float) for v in (y, mean, variance))
    variance = np.maximum(variance, 1e-12)
    return float(np.mean(0.5 * np.log(2 * math.pi * variance) + (y - mean) ** 2 / (2 * variance)))


# ---------------------------------------------------------------- optimisation quality


def convergence_speed(errors: list[float]) -> int:
    """Evaluations until the best-so-far error has gone 90% of the way from the first to the best."""
    best_so_far = np.minimum.accumulate(np.asarray(errors, dtype=float))
    start, final = best_so_far[0], best_so_far[-1]
    if start == final:
        return 1
    reached = np.nonzero(start - best_so_far >= 0.9 * (start - final))[0]
    return int(reached[0]) + 1
