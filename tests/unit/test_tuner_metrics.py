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


def test_retrieval_and_lipschitz():
    originals = np.eye(10)
    assert metrics.retrieval_at_k(originals, originals, k=1) == 1.0
    swapped = originals[[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]]  # rows 0 and 1 decode to each other
    assert metrics.retrieval_at_k(swapped, originals, k=1) == 0.8
    assert metrics.retrieval_at_k(swapped, originals, k=2) == 1.0
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
