"""LIPO's BO proposals for Hyperband: when the GP starts, and that its LogEI ranking finds low
error. The second test fits the real VAE and deep-kernel GP on a synthetic pool whose error is
a known smooth function of the embedding, so a reversed ranking or acquisition fails it."""

import random

import numpy as np
import pytest

from services.common.errors import NotFoundError
from services.optimizer.algorithms.hyperband import MIN_GP_POINTS, Evaluation, GpProposer
from services.surrogate.engine import SurrogateEngine
from services.surrogate.types import FitResult, GpTraining, VaeConfig


class CountingSurrogate:
    """Records fits; LogEI prefers low candidate indices (pure logic, no model). The surrogate may
    already have evicted a superseded GP: deleting it then raises NotFoundError."""

    def __init__(self):
        self.fits, self.deleted = [], []

    def fit(self, x, y, vae_id="", minimize=False, training=None, owner=""):
        self.fits.append((len(y), minimize, vae_id, training, owner))
        return FitResult(f"gp{len(self.fits)}", 0.0, 1)

    def delete(self, model_id):
        self.deleted.append(model_id)
        raise NotFoundError(f"model_id {model_id!r} not found")

    def log_ei(self, model_id, x, best_f=None):
        return -np.arange(len(x), dtype=float)


def test_bo_proposals_wait_for_four_high_fidelity_points():
    surrogate, training = CountingSurrogate(), GpTraining(epochs=7)
    proposer = GpProposer(surrogate, np.eye(10, dtype=np.float32), "vae", 30, 0.0, training, owner="run-1")
    low = [Evaluation(i, 10, 0.1 * i) for i in range(6)]  # below the threshold: never GP data
    high = [Evaluation(i, 40, 0.1 * i) for i in range(MIN_GP_POINTS - 1)]
    assert MIN_GP_POINTS == 4
    assert proposer.model_for(low + high) is None and surrogate.fits == [] and proposer.fits == 0
    picks = proposer.propose(range(10), 3, low + high, random.Random(0))  # random until then
    assert len(set(picks)) == 3 and set(picks) <= set(range(10))
    history = low + high + [Evaluation(7, 40, 0.5)]
    assert proposer.model_for(history) == "gp1" and proposer.fits == 1
    assert surrogate.fits == [(4, True, "vae", training, "run-1")]  # four points, error minimised, the run's
    assert proposer.model_for(history) == "gp1" and len(surrogate.fits) == 1  # same data: no refit
    assert proposer.propose([9, 3, 5], 2, history, random.Random(0)) == [9, 3]  # LogEI order, no randomness
    # new data: a refit, and the superseded GP is deleted (already evicted here: no error)
    assert proposer.model_for([*history, Evaluation(8, 40, 0.2)]) == "gp2" and surrogate.deleted == ["gp1"]
    assert proposer.fits == 2


def synthetic_pool(seed: int, size: int = 80, dim: int = 24):
    """Unit vectors that vary along two hidden factors (as instructions vary in a few ways);
    the error is lowest at a hidden optimum in factor space and rises smoothly away from it."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(-1, 1, size=(size, 2))
    mixing = rng.normal(size=(2, dim))
    x = factors @ mixing + rng.normal(size=dim) + 0.02 * rng.normal(size=(size, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    optimum = rng.uniform(-0.6, 0.6, size=2)
    error = 0.2 + 0.1 * np.sum((factors - optimum) ** 2, axis=1)
    return x, error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gp_logei_proposals_beat_random_on_a_known_objective(seed):
    x, error = synthetic_pool(seed)
    engine = SurrogateEngine()
    vae_id = engine.train_vae(x, VaeConfig(epochs=300, patience=300, annealing_epochs=50, seed=seed)).vae_id
    rng = random.Random(seed)
    observed = rng.sample(range(len(x)), 12)
    history = [Evaluation(i, 40, float(error[i])) for i in observed]
    candidates = [i for i in range(len(x)) if i not in observed]
    proposer = GpProposer(engine, x, vae_id, 30, 0.0, GpTraining(epochs=300, lr=0.01, patience=50, seed=seed))
    picks = proposer.propose(candidates, 8, history, rng)
    assert len(set(picks)) == 8 and set(picks) <= set(candidates)
    random_mean = float(np.mean(error[candidates]))  # what random proposals average
    picked_mean = float(np.mean(error[picks]))
    assert picked_mean < random_mean - 0.05, (picked_mean, random_mean)
