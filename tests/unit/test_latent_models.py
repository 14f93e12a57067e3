"""InstructionVAE, the deep-kernel GP and InvBO latent inversion on real (shipped) embeddings."""

import json

import numpy as np
import pytest
import torch

from services.common.cancellation import caller_scope
from services.common.errors import CallerGoneError
from services.surrogate.engine import SurrogateEngine
from services.surrogate.types import AcquisitionConfig, GpTraining, InversionConfig, VaeConfig
from services.surrogate.vae import InstructionVAE, invert_latent, kl_beta, train_vae, vae_quality


@pytest.fixture(scope="module")
def ape_embeddings(datasets_dir, embedder):
    texts = json.loads((datasets_dir / "prompts" / "ape_instructions_1000.json").read_text())[:300]
    return torch.as_tensor(embedder.encode(texts))


def test_seed_defaults():
    config = VaeConfig()
    assert (config.latent_dim, config.hidden_dim, config.beta, config.epochs) == (64, 256, 0.003, 10000)
    assert (config.annealing_epochs, config.patience, config.lr, config.batch_size) == (500, 500, 3e-4, 64)
    assert (config.grad_clip, config.eta_min) == (1.0, 1e-4)
    assert GpTraining() == GpTraining(10000, 0.01, 100)
    assert GpTraining.for_hyperband() == GpTraining(3000, 0.01, 50)
    assert GpTraining.for_retrain() == GpTraining(500, 0.001, 10)
    assert AcquisitionConfig() == AcquisitionConfig(64, 1024, 200, 5, 0.2)
    assert InversionConfig() == InversionConfig(100, 0.1, 0.01)


def test_kl_annealing_is_linear_then_constant():
    config = VaeConfig(beta=0.003, annealing_epochs=500)
    assert kl_beta(0, config) == 0.0
    assert kl_beta(250, config) == pytest.approx(0.0015)
    assert kl_beta(500, config) == kl_beta(5000, config) == 0.003


def test_vae_shapes_and_unit_norm_output():
    vae = InstructionVAE(input_dim=384)
    recon, mu, log_var = vae(torch.randn(5, 384))
    assert recon.shape == (5, 384) and mu.shape == log_var.shape == (5, 64)
    assert torch.allclose(recon.norm(dim=-1), torch.ones(5), atol=1e-5)


def test_vae_reconstructs_held_out_instructions(ape_embeddings):
    vae, training = train_vae(ape_embeddings[:250], VaeConfig(epochs=150, patience=30, annealing_epochs=50))
    assert training.epochs_trained <= 150
    held = vae_quality(vae, ape_embeddings[250:])
    untrained = vae_quality(InstructionVAE(384).eval(), ape_embeddings[250:])
    assert held["cosine_mean"] > 0.85 > untrained["cosine_mean"]
    assert held["total_dims"] == 64 and 0 <= held["active_dims"] <= 64


def test_final_losses_are_the_returned_checkpoints(ape_embeddings):
    """vae_training's final_*_loss describe the model handed back (the best epoch's), not the last epoch."""
    x = ape_embeddings[:120]
    config = VaeConfig(epochs=80, patience=10, annealing_epochs=20, lr=3e-3, val_fraction=0.0)
    vae, training = train_vae(x, config)
    with torch.no_grad():
        mu, log_var = vae.encode(x)
        recon = float((1 - torch.cosine_similarity(x, vae.decode(mu), dim=-1)).mean())
        kl = float(-0.5 * torch.mean(torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)))
    assert training.final_recon_loss == pytest.approx(recon, abs=1e-6)
    assert training.final_kl_loss == pytest.approx(kl, rel=1e-5)
    assert training.best_val_recon_loss == pytest.approx(recon, abs=1e-6)  # no held-out rows: val = train


def test_inversion_converges_on_a_known_target(ape_embeddings):
    vae, _ = train_vae(ape_embeddings, VaeConfig(epochs=60, patience=60, annealing_epochs=20))
    with torch.no_grad():
        z_true = vae.encode(ape_embeddings[:1])[0][0]
        target = vae.decode(z_true[None])[0]
    z_start = torch.zeros_like(z_true)
    start_loss = float(1 - torch.cosine_similarity(vae.decode(z_start[None])[0], target, dim=0))
    z, loss, steps = invert_latent(vae.decode, target, z_start, InversionConfig(n_steps=300, lr=0.1))
    assert start_loss > 0.02  # the start is not already there
    assert loss < 0.01 and steps < 300  # converged: stopped early below the threshold


def test_deep_kernel_gp_fit_predict_optimize_update(ape_embeddings):
    engine = SurrogateEngine()
    x = ape_embeddings[:60].numpy()
    vae_id = engine.train_vae(ape_embeddings[:150], VaeConfig(epochs=40, patience=40, annealing_epochs=20)).vae_id
    direction = np.random.default_rng(0).normal(size=x.shape[1])
    y = x @ direction
    y = (y - y.min()) / (y.max() - y.min())  # an error rate that depends smoothly on the embedding
    fit = engine.fit(x[:50], y[:50], vae_id, minimize=True, training=GpTraining(epochs=400, patience=50))
    mean, var = engine.predict(fit.model_id, x[:50])
    assert np.corrcoef(mean, y[:50])[0, 1] > 0.8 and (var > 0).all()
    point = engine.optimize(fit.model_id, AcquisitionConfig(num_restarts=2, raw_samples=32, maxiter=50))
    assert len(point.latent) == 64 and len(point.embedding) == 384 and np.isfinite(point.value)
    # a minimising acquisition goes where the predicted error is low
    optimum, _ = engine.registry.get(fit.model_id)._posterior_unit(torch.tensor([point.latent], dtype=torch.float64))
    assert float(optimum[0]) < np.quantile(y[:50], 0.25)
    decoded = engine.decode(fit.model_id, np.array([point.latent]))
    assert np.allclose(decoded[0], point.embedding, atol=1e-5)
    inverted = engine.invert(fit.model_id, point.embedding, np.zeros(64), InversionConfig(n_steps=200))
    assert inverted.value < 0.05
    before = engine.predict(fit.model_id, x[:52])
    with caller_scope(lambda: False), pytest.raises(CallerGoneError):  # the caller left mid-update
        engine.update(fit.model_id, x[50:52], y[50:52], GpTraining(epochs=50, lr=0.001, patience=10))
    after = engine.predict(fit.model_id, x[:52])  # the model is exactly as before the abandoned update
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    count, epochs = engine.update(fit.model_id, x[50:52], y[50:52], GpTraining(epochs=50, lr=0.001, patience=10))
    assert count == 52 and 0 < epochs <= 50
    with pytest.raises(ValueError, match="exact GP"):
        engine.optimize(engine.fit(x[:5, :3], y[:5]).model_id)
