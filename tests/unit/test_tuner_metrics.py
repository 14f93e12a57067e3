"""Seed 004's metric computations and targets, against hand-worked values."""

import math

import numpy as np
import pytest

from services.tuner import metrics


def test_there_are_25_metrics_in_five_groups_with_the_seeds_targets():
    assert len(metrics.METRICS) == 25
    groups = [m.group for m in metrics.METRICS]
    assert [groups.count(g) for g in ("vae", "scorer", "gp", "optimization", "end_to_end")] == [6, 5, 5, 5, 4]
    check = {m.name: m.passed for m in metrics.METRICS}
    assert check["retrieval_accuracy_at_8"](0.85) and not check["retrieval_accuracy_at_8"](0.849)
    assert check["lipschitz_constant"](9.99) and not check["lipschitz_constant"](10.0)
    assert check["kl_divergence"](0.5) and not check["kl_divergence"](0.05) and not check["kl_divergence"](1.2)
    assert check["final_accuracy"](0.915) and not check["final_accuracy"](0.9149)
    assert check["exemplar_variance"](1e-6) and not check["exemplar_variance"](0.0)
    assert check["nll_heldout"](3.0) is None and check["rmse"](None) is None
    report = metrics.assess({"rmse": 0.01})
    assert len(report) == 25 and next(r for r in report if r["name"] == "rmse")["passed"] is True


SEED_TABLE = """
reconstruction_cosine | ≥0.93
reconstruction_mse | ≤0.05
kl_divergence | 0.1-1.0
retrieval_accuracy_at_8 | ≥0.85
lipschitz_constant | <10
percentile10_cosine | ≥0.70
ndcg_at_8 | ≥0.70
mrr | ≥0.50
selection_loss | <2.0
exemplar_diversity | >0.3
exemplar_variance | >0
spearman_correlation | ≥0.40
rmse | <0.05
calibration_error | <0.10
lengthscale_ratio | 0.5-2.0
nll_heldout | minimize
system_gap | <0.5
rejection_rate | <0.30
improvement_rate | >0.20
best_error_rate | <0.085
convergence_speed | <20
final_accuracy | ≥91.5%
sample_efficiency | maximize
wall_clock_time | minimize
gpu_memory_peak | <20GB
"""  # seed 004's taxonomy, as written there


@pytest.mark.parametrize("row", SEED_TABLE.strip().splitlines())
def test_each_metric_passes_exactly_on_the_seeds_side_of_its_target(row):
    name, target = (part.strip() for part in row.split("|"))
    check, eps = metrics.BY_NAME[name].passed, 1e-9
    if target in ("minimize", "maximize"):
        assert check(0.5) is None
    elif "-" in target:
        low, high = (float(v) for v in target.split("-"))
        assert check(low) and check(high) and not check(low - eps) and not check(high + eps)
    else:
        op, bound = target[0], float(target[1:].rstrip("%GB")) / (100 if target.endswith("%") else 1)
        inside = {"≥": bound, "≤": bound, "<": bound - eps, ">": bound + eps}[op]
        outside = {"≥": bound - eps, "≤": bound + eps, "<": bound, ">": bound}[op]
        assert check(inside) is True and check(outside) is False
    assert check(float("nan")) in (None, False)  # a NaN never passes


def test_retrieval_and_lipschitz():
    originals = np.eye(10)
    assert metrics.retrieval_at_k(originals, originals, k=1) == 1.0
    swapped = originals[[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]]  # rows 0 and 1 decode to each other
    assert metrics.retrieval_at_k(swapped, originals, k=1) == 0.8
    assert metrics.retrieval_at_k(swapped, originals, k=2) == 1.0
    # held-out rows 3 and 5 decoded (row 5's decoding lands on row 6) and retrieved among all ten
    assert metrics.retrieval_at_k(originals[[3, 6]], originals, k=1, own=[3, 5]) == 0.5
    z = np.zeros((2, 3))
    near = z + np.array([[0.1, 0, 0], [0, 0.2, 0]])
    assert metrics.lipschitz_estimate(z, near, np.zeros((2, 4)), np.array([[0.5, 0, 0, 0], [0, 0.4, 0, 0]])) == 5.0


def test_gp_metrics():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    y = rng.normal(size=20000)
    assert metrics.calibration_error(y, np.zeros_like(y), np.ones_like(y)) < 0.01  # well calibrated
    assert metrics.calibration_error(y, np.zeros_like(y), 0.2 * np.ones_like(y)) > 0.3  # overconfident
    assert metrics.gaussian_nll([0.0], [0.0], [1.0]) == pytest.approx(0.5 * math.log(2 * math.pi))


def test_scorer_metrics_and_convergence():
    assert metrics.mean_reciprocal_rank(np.array([[0.1, 0.9, 0.5]]), np.array([[0, 0, 1]])) == 0.5
    tied = np.array([[1, 1, 1, 0, 0]])  # three equally relevant items: the best-ranked of them counts
    assert metrics.mean_reciprocal_rank(np.array([[0.1, 0.9, 0.8, 0, 0]]), tied) == 1.0
    assert metrics.mean_reciprocal_rank(np.array([[0.1, 0.2, 0.3, 0.9, 0.5]]), tied) == pytest.approx(1 / 3)
    assert metrics.selection_variance([[0, 1], [0, 1]], 4) == 0.0
    assert metrics.selection_variance([[0], [1]], 2) == 0.25
    unit = np.eye(3)
    assert metrics.exemplar_diversity(unit, [0, 1, 2]) == pytest.approx(1.0)
    assert metrics.exemplar_diversity(np.ones((3, 2)), [0, 1, 2]) == pytest.approx(0.0)
    assert metrics.convergence_speed([0.5, 0.4, 0.3, 0.12, 0.1]) == 4  # 0.38 of 0.4 is past 90%
    assert metrics.convergence_speed([0.2, 0.2]) == 1


def test_the_selection_loss_is_per_position_over_the_top_k():
    relevance = np.array([[4.0, 3.0, 2.0, 1.0, 0.0]])
    perfect = metrics.list_mle(100 * relevance, relevance, k=2)
    uniform = metrics.list_mle(np.zeros((1, 5)), relevance, k=2)
    assert perfect < 1e-6 and uniform == pytest.approx((math.log(5) + math.log(4)) / 2)
    assert metrics.list_mle(-100 * relevance, relevance, k=2) > uniform  # reversed is worse than random
    # ties may come in any order: separating the levels reaches the ties' floor, log(group size)
    tied = np.array([[1.0, 1.0, 0.0, 0.0]])
    separated = metrics.list_mle(100 * tied, tied, k=2)
    assert separated == pytest.approx((math.log(2) + 0) / 2, abs=1e-6)
    favour_first = metrics.list_mle(np.array([[100.0, 0.0, -100, -100]]), tied, k=2)
    assert favour_first > separated
