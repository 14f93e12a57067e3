"""BOLT's exemplar scorer: ListMLE against a brute-force Plackett-Luce reference, the ranking
metrics, MMR's trade-off, and a scorer that learns a ranking it can generalise."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from services.surrogate.scorer import list_mle, mmr_select, score, train_scorer
from services.surrogate.types import ScorerConfig
from services.tuner import metrics
from services.tuner.metrics import exemplar_diversity, mean_reciprocal_rank, ndcg_at_k


def plackett_luce_nll(scores: list[float], order: list[int]) -> float:
    """-log P(order) with P = prod_i exp(s[o_i]) / sum_{j >= i} exp(s[o_j]), written out."""
    total = 0.0
    for i, item in enumerate(order):
        rest = order[i:]
        total -= scores[item] - math.log(sum(math.exp(scores[j]) for j in rest))
    return total


def test_list_mle_matches_the_plackett_luce_reference():
    scores = [0.3, -1.2, 2.0, 0.7]
    relevance = [0.1, 0.9, 0.5, 0.0]  # order: 1, 2, 0, 3
    got = float(list_mle(torch.tensor([scores]), torch.tensor([relevance])))
    assert got == pytest.approx(plackett_luce_nll(scores, [1, 2, 0, 3]), rel=1e-6)
    # the loss is a proper distribution over orders: probabilities of all 24 orders sum to 1
    probabilities = [math.exp(-plackett_luce_nll(scores, list(o))) for o in itertools.permutations(range(4))]
    assert sum(probabilities) == pytest.approx(1.0)


def test_list_mle_prefers_scores_that_agree_with_the_relevance():
    relevance = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    agree, disagree = torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert float(list_mle(agree, relevance)) < float(list_mle(disagree, relevance))


def test_ranking_metrics():
    relevance = np.array([3.0, 2.0, 0.0, 1.0])
    assert ndcg_at_k(relevance, relevance, k=4) == pytest.approx(1.0)
    reversed_scores = -relevance
    # gains 3,2,0,1 ranked by -relevance: items 2,3,1,0 -> gains 0,1,2,3
    discounts = 1 / np.log2(np.arange(2, 6))
    expected = (np.array([0, 1, 2, 3]) * discounts).sum() / (np.array([3, 2, 1, 0]) * discounts).sum()
    assert ndcg_at_k(reversed_scores, relevance, k=4) == pytest.approx(expected)
    assert mean_reciprocal_rank(np.array([[0.1, 0.9, 0.5]]), np.array([[0.0, 0.2, 1.0]])) == pytest.approx(0.5)
    assert mean_reciprocal_rank(np.array([[0.1, 0.9, 0.5]]), np.array([[0.0, 1.0, 0.2]])) == 1.0


def test_mmr_trades_relevance_for_diversity():
    embeddings = np.array([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0]])  # items 0 and 1 are near duplicates
    scores = np.array([1.0, 0.95, 0.5])
    assert mmr_select(scores, embeddings, 2, mmr_lambda=1.0) == [0, 1]  # relevance only
    assert mmr_select(scores, embeddings, 2, mmr_lambda=0.5) == [0, 2]  # the duplicate costs too much
    assert exemplar_diversity(embeddings, [0, 2]) > exemplar_diversity(embeddings, [0, 1])
    with pytest.raises(ValueError, match="k must be in"):
        mmr_select(scores, embeddings, 4, 0.5)


def test_the_scorer_learns_a_ranking_that_holds_for_new_instructions():
    rng = np.random.default_rng(0)
    dim, pool_size = 16, 24
    pool = rng.normal(size=(pool_size, dim))
    mixing = rng.normal(size=(dim, dim))
    instructions = rng.normal(size=(60, dim))
    relevance = (instructions @ mixing) @ pool.T  # a learnable instruction -> exemplar preference
    train, held_out = slice(0, 48), slice(48, 60)
    config = ScorerConfig(hidden=32, heads=4, num_inducing=4, epochs=300, lr=3e-3)
    model, training = train_scorer(instructions[train], pool, relevance[train], config)
    assert training.final_loss < training.first_loss
    learned = ndcg_at_k(score(model, instructions[held_out]), relevance[held_out], k=8)
    chance = np.mean([ndcg_at_k(rng.normal(size=(12, pool_size)), relevance[held_out], k=8) for _ in range(20)])
    assert learned > chance + 0.1, (learned, chance)


def test_config_and_shapes_are_checked():
    with pytest.raises(ValueError, match="multiple of heads"):
        ScorerConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="mmr_lambda"):
        ScorerConfig(mmr_lambda=1.5)
    with pytest.raises(ValueError, match="relevance must have shape"):
        train_scorer(np.zeros((3, 4)), np.zeros((5, 4)), np.zeros((3, 4)), ScorerConfig(epochs=1))


def test_the_tuners_list_mle_matches_the_training_loss():
    rng = np.random.default_rng(0)
    scores, relevance = rng.normal(size=(3, 7)), rng.uniform(size=(3, 7))
    expected = float(list_mle(torch.as_tensor(scores), torch.as_tensor(relevance)))
    assert metrics.list_mle(scores, relevance) == pytest.approx(expected, rel=1e-9)
