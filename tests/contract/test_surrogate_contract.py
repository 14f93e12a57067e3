"""The surrogate's latent-model API, in process and over gRPC: the same calls, the same answers."""

import json

import grpc
import numpy as np
import pytest

from services.surrogate.types import (
    AcquisitionConfig,
    GpTraining,
    InversionConfig,
    JointGpConfig,
    JointVaeConfig,
    ScorerConfig,
    VaeConfig,
)
from tests.contract.conftest import invalid_argument


@pytest.fixture(scope="module")
def ape(datasets_dir, embedder):
    texts = json.loads((datasets_dir / "prompts" / "ape_instructions_1000.json").read_text())[:120]
    return embedder.encode(texts)


def test_vae_gp_acquisition_inversion_round_trip(surrogate_service, ape):
    vae = surrogate_service.train_vae(ape, VaeConfig(epochs=30, patience=30, annealing_epochs=10, seed=1))
    assert vae.vae_id and vae.epochs_trained == 30 and not vae.early_stopped
    assert vae.quality["total_dims"] == 64 and 0 < vae.quality["cosine_mean"] <= 1
    y = np.linspace(0.1, 0.4, 12)
    fit = surrogate_service.fit(ape[:12], y, vae.vae_id, True, GpTraining(epochs=50, patience=10))
    assert 0 < fit.epochs_trained <= 50
    mean, var = surrogate_service.predict(fit.model_id, ape[:12])
    assert mean.shape == var.shape == (12,) and (var > 0).all()
    assert surrogate_service.log_ei(fit.model_id, ape[:3]).shape == (3,)
    point = surrogate_service.optimize(fit.model_id, AcquisitionConfig(num_restarts=2, raw_samples=16, maxiter=20))
    assert len(point.latent) == 64 and len(point.embedding) == ape.shape[1]
    decoded = surrogate_service.decode(fit.model_id, np.array([point.latent], dtype=np.float32))
    assert np.allclose(decoded[0], point.embedding, atol=1e-5)
    inverted = surrogate_service.invert(fit.model_id, ape[20], point.latent, InversionConfig(n_steps=20))
    assert 0 < inverted.steps <= 20 and inverted.value < 1
    assert surrogate_service.update(fit.model_id, ape[12:14], [0.2, 0.3], GpTraining(epochs=5))[0] == 14


def test_latent_calls_reject_bad_input(surrogate_service, ape):
    not_found = (LookupError, grpc.RpcError)
    with pytest.raises(not_found, match="vae_id 'nope' not found"):
        surrogate_service.fit(ape[:4], [0.1, 0.2, 0.3, 0.4], "nope", True)
    with invalid_argument("embeddings needs at least 2 rows"):
        surrogate_service.train_vae(ape[:1], VaeConfig(epochs=2))
    vae = surrogate_service.train_vae(ape[:20], VaeConfig(epochs=2, patience=2))
    with invalid_argument(r"train_x must have shape \[n, 384\]"):
        surrogate_service.fit(ape[:4, :10], [0.1, 0.2, 0.3, 0.4], vae.vae_id, True)
    exact = surrogate_service.fit(ape[:4, :2], [0.1, 0.2, 0.3, 0.4])
    with invalid_argument("is an exact GP"):
        surrogate_service.optimize(exact.model_id, AcquisitionConfig(num_restarts=1, raw_samples=4))
    deep = surrogate_service.fit(ape[:4], [0.1, 0.2, 0.3, 0.4], vae.vae_id, True, GpTraining(epochs=3))
    with invalid_argument(r"latents must have shape \[n, 64\]"):
        surrogate_service.decode(deep.model_id, np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(not_found, match="model_id 'gone' not found"):
        surrogate_service.invert("gone", ape[0], np.zeros(64))


def test_a_runs_models_are_deleted_by_owner(surrogate_service, ape):
    """A finished run frees every VAE and GP it made, and nobody else's."""
    from services.common.errors import NotFoundError

    tiny = VaeConfig(epochs=2, patience=2)
    mine = surrogate_service.train_vae(ape[:20], tiny, owner="run-a")
    theirs = surrogate_service.train_vae(ape[:20], tiny, owner="run-b")
    gp = surrogate_service.fit(ape[:4], [0.1, 0.2, 0.3, 0.4], mine.vae_id, True, GpTraining(epochs=2), owner="run-a")
    assert surrogate_service.delete_owned("run-a") == 2
    assert surrogate_service.delete_owned("run-a") == 0
    with pytest.raises(NotFoundError, match="not found"):
        surrogate_service.predict(gp.model_id, ape[:1])
    with pytest.raises(NotFoundError, match="vae_id"):
        surrogate_service.fit(ape[:4], [0.1, 0.2, 0.3, 0.4], mine.vae_id, True, GpTraining(epochs=2))
    surrogate_service.fit(ape[:4], [0.1, 0.2, 0.3, 0.4], theirs.vae_id, True, GpTraining(epochs=2))  # still there
    with invalid_argument("owner must be set"):
        surrogate_service.delete_owned("")


def test_joint_vae_gp_proposals_and_inversion_round_trip(surrogate_service, ape):
    pool = ape[60:80]
    vae = surrogate_service.train_joint_vae(
        ape[:40], pool, JointVaeConfig(epochs=3, samples=64, num_slots=3, seed=1), owner="run-e"
    )
    assert vae.vae_id and vae.epochs_trained == 3 and 0 <= vae.exemplar_f1 <= 1 and 0 < vae.inst_cosine <= 1
    sets = [[0, 1], [], [2, 5, 7], [3], [4, 6], [8, 9, 10]]
    z = surrogate_service.encode_joint(vae.vae_id, ape[:6], sets)
    assert z.shape == (6, 32)
    errors, fidelities = [0.2, 0.5, 0.3, 0.9, 0.4, 0.6], [10, 20, 40, 80, 80, 10]
    fit = surrogate_service.fit_joint(z, errors, fidelities, JointGpConfig(epochs=20), owner="run-e")
    mean, var = surrogate_service.predict(fit.model_id, z)
    assert mean.shape == (6,) and (var > 0).all() and 0 < fit.epochs_trained <= 20
    assert surrogate_service.log_ei(fit.model_id, z).shape == (6,)
    proposals = surrogate_service.propose_exemplars(vae.vae_id, fit.model_id, ape[10:12], steps=2, restarts=2)
    assert len(proposals) == 2 and all(len(ids) <= 3 and np.isfinite(v) for ids, v in proposals)
    best, value = surrogate_service.optimize_joint(
        fit.model_id, AcquisitionConfig(num_restarts=2, raw_samples=16, maxiter=5)
    )
    assert best.shape == (32,) and np.isfinite(value)
    embeddings, decoded = surrogate_service.decode_joint(vae.vae_id, best[None])
    assert embeddings.shape == (1, ape.shape[1]) and all(0 <= i < 20 for i in decoded[0])
    with invalid_argument(r"exemplar_sets\[1\] must hold at most 3 distinct pool ids in \[0, 20\)"):
        surrogate_service.encode_joint(vae.vae_id, ape[:2], [[0], [25]])
    with invalid_argument(r"exemplar_sets\[0\] must hold at most 3"):
        surrogate_service.encode_joint(vae.vae_id, ape[:1], [[1, 1]])
    with invalid_argument("errors must lie in"):
        surrogate_service.fit_joint(z, [1.5] * 6, fidelities)
    assert surrogate_service.delete_owned("run-e") == 2


def test_bolt_settings_and_the_exemplar_scorer(surrogate_service, ape):
    """BOLT's fields reach the models: latent widths, the deep kernel, UCB with a distance
    penalty; the scorer learns which pool rows are relevant and MMR selects from its scores."""
    pool = ape[60:72]
    vae = surrogate_service.train_joint_vae(
        ape[:20], pool, JointVaeConfig(epochs=2, samples=32, num_slots=3, inst_dim=12, ex_dim=8), owner="bolt"
    )
    z = surrogate_service.encode_joint(vae.vae_id, ape[:4], [[0], [1, 2], [], [3]])
    assert z.shape == (4, 20)
    config = JointGpConfig(epochs=10, inst_dim=12, deep_kernel=True)
    fit = surrogate_service.fit_joint(z, [0.2, 0.5, 0.3, 0.7], [50] * 4, config, owner="bolt")
    acquisition = AcquisitionConfig(num_restarts=2, raw_samples=16, maxiter=5, acquisition="ucb", distance_weight=1.0)
    best, value = surrogate_service.optimize_joint(fit.model_id, acquisition)
    assert best.shape == (20,) and np.isfinite(value)
    relevance = np.tile(np.linspace(1.0, 0.0, 12), (6, 1))  # pool row 0 is the most relevant for all
    trained = surrogate_service.train_scorer(ape[:6], pool, relevance, ScorerConfig(epochs=150), owner="bolt")
    assert trained.scorer_id and trained.epochs_trained == 150 and trained.final_loss < trained.first_loss
    scores, selected = surrogate_service.score_exemplars(trained.scorer_id, ape[6:9], k=4, mmr_lambda=1.0)
    assert scores.shape == (3, 12) and all(s[0] == 0 and len(set(s)) == 4 for s in selected)
    with invalid_argument(r"relevance must have shape \[n, 12\]"):
        surrogate_service.train_scorer(ape[:6], pool, relevance[:, :5])
    with invalid_argument(r"k must be in \[0, 12\]"):
        surrogate_service.score_exemplars(trained.scorer_id, ape[6:9], k=13)
    with invalid_argument("mmr_lambda must be in"):
        surrogate_service.score_exemplars(trained.scorer_id, ape[6:9], k=2, mmr_lambda=1.5)
    with invalid_argument("hidden .* must be a positive multiple of heads"):
        surrogate_service.train_scorer(ape[:6], pool, relevance, ScorerConfig(hidden=100, heads=8))
    assert surrogate_service.delete_owned("bolt") == 3
