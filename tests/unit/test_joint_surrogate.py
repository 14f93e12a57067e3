"""LIPO-E's surrogate (seed 001): Beta smoothing, the product-kernel JointPromptGP, the
StructureAwareVAE's shapes, set handling and slot decoding, and the two acquisition searches."""

import numpy as np
import pytest
import torch

from services.surrogate.acquisition import latent_bounds
from services.surrogate.joint import (
    EX_DIM,
    INST_DIM,
    JOINT_DIM,
    JointPromptGP,
    StructureAwareVAE,
    beta_smooth,
    fit_beta_prior,
    optimize_joint,
    pad_sets,
    propose_exemplars,
    set_f1,
    slot_targets,
    train_joint_vae,
)
from services.surrogate.types import AcquisitionConfig, JointGpConfig, JointVaeConfig


def test_beta_prior_is_the_method_of_moments_fit():
    rates = np.array([0.1, 0.2, 0.3, 0.4])
    alpha, beta = fit_beta_prior(rates)
    mean, var = rates.mean(), rates.var()
    assert alpha / (alpha + beta) == pytest.approx(mean)
    assert alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1)) == pytest.approx(var)
    assert fit_beta_prior(np.array([0.3, 0.3, 0.3])) == (1.0, 1.0)  # no spread: uniform prior
    assert fit_beta_prior(np.array([0.5])) == (1.0, 1.0)


def test_beta_smoothing_follows_the_seed_formulas():
    smoothed, var = beta_smooth(np.array([0.0, 0.5]), np.array([10, 1000]), 2.0, 3.0)
    assert smoothed[0] == pytest.approx((0 + 2) / (10 + 5))  # (k + a) / (n + a + b)
    assert smoothed[1] == pytest.approx((500 + 2) / (1000 + 5))
    assert var[0] == pytest.approx(smoothed[0] * (1 - smoothed[0]) / (10 + 5 + 1))
    assert var[0] > 10 * var[1]  # low fidelity: noisier


def synthetic(n, seed=0):
    """z with an instruction x exemplar interaction: error low only where both halves agree."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, JOINT_DIM))
    signal = np.tanh(z[:, 0]) * np.tanh(z[:, INST_DIM])
    return z, np.clip(0.5 - 0.4 * signal, 0.01, 0.99)


def test_joint_gp_has_the_product_kernel_and_beta_noise():
    z, errors = synthetic(30)
    fidelities = np.where(np.arange(30) % 2 == 0, 10, 1000)
    gp = JointPromptGP(z, errors, fidelities, JointGpConfig(epochs=30))
    product = gp.model.covar_module.base_kernel
    assert [tuple(k.active_dims.tolist()) for k in product.kernels] == [
        tuple(range(INST_DIM)),
        tuple(range(INST_DIM, JOINT_DIM)),
    ]
    assert [k.lengthscale.shape[-1] for k in product.kernels] == [INST_DIM, EX_DIM]  # ARD
    noise = gp.likelihood.noise
    assert float(noise[0]) > 10 * float(noise[1])  # 10 questions vs 1000
    single = JointPromptGP(z, errors, fidelities, JointGpConfig(epochs=30, product=False, beta_smoothing=False))
    assert single.model.covar_module.base_kernel.lengthscale.shape[-1] == JOINT_DIM
    assert single.prior == (0.0, 0.0)


def test_joint_gp_learns_the_interaction_and_log_ei_points_down():
    z, errors = synthetic(80)
    gp = JointPromptGP(z[:60], errors[:60], np.full(60, 1319))
    mean, var = gp.predict(z[60:])
    assert np.corrcoef(mean, errors[60:])[0, 1] > 0.5
    assert (var > 0).all()
    scores = gp.log_ei(z[60:])
    assert errors[60:][np.argmax(scores)] < np.median(errors[60:])  # minimisation of error
    with pytest.raises(ValueError, match="z must have shape"):
        JointPromptGP(z[:, :10], errors, np.full(80, 10))
    with pytest.raises(ValueError, match="errors must lie in"):
        JointPromptGP(z, errors + 1, np.full(80, 10))


@pytest.mark.parametrize("acquisition", ["logei", "ucb"])
def test_optimize_joint_finds_a_low_predicted_error(acquisition):
    z, errors = synthetic(60, seed=1)
    gp = JointPromptGP(z, errors, np.full(60, 1319), JointGpConfig(epochs=200))
    bounds = torch.stack([torch.as_tensor(z.min(0)), torch.as_tensor(z.max(0))])
    config = AcquisitionConfig(num_restarts=4, raw_samples=128, maxiter=30, acquisition=acquisition, ucb_beta=4.0)
    best, value = optimize_joint(gp, bounds, config)
    mean, _ = gp.predict(best[None])
    assert np.isfinite(value) and (best >= z.min(0) - 1e-9).all() and (best <= z.max(0) + 1e-9).all()
    assert mean[0] < np.quantile(errors, 0.25)


def test_ucb_rewards_low_error_and_uncertainty_and_distance_weight_keeps_near_the_data():
    z, errors = synthetic(40, seed=2)
    gp = JointPromptGP(z, errors, np.full(40, 1319), JointGpConfig(epochs=150))
    points = torch.as_tensor(z[:10])
    mean, std = gp.posterior(points)
    ucb = gp.acquisition(points, AcquisitionConfig(acquisition="ucb", ucb_beta=9.0)).detach()
    expected = (-mean + 3.0 * std) / gp.y_std
    assert torch.allclose(ucb, expected.detach())  # lower error and more uncertainty both raise UCB
    far = torch.as_tensor(z.max(0) + 3 * (z.max(0) - z.min(0)))[None]
    plain = gp.acquisition(far, AcquisitionConfig(acquisition="ucb"))
    penalised = gp.acquisition(far, AcquisitionConfig(acquisition="ucb", distance_weight=2.0))
    assert float(plain - penalised) > 2.0 * 2.9  # 3 ranges out in every dimension: distance > 2.9
    bounds = latent_bounds(torch.as_tensor(z), 3.0)
    gaps = []
    for weight in (0.0, 20.0):
        config = AcquisitionConfig(
            num_restarts=4, raw_samples=256, maxiter=30, acquisition="ucb", distance_weight=weight
        )
        best, _ = optimize_joint(gp, bounds, config)
        gaps.append(np.linalg.norm(z - best, axis=1).min())
    assert gaps[1] < gaps[0]


def test_latent_widths_and_the_deep_kernel_are_configurable():
    rng = np.random.default_rng(0)
    instructions, pool = torch.as_tensor(rng.normal(size=(6, 24))), torch.as_tensor(rng.normal(size=(10, 24)))
    config = JointVaeConfig(epochs=3, samples=64, num_slots=3, inst_dim=12, ex_dim=8, mse_weight=0.3)
    vae, _ = train_joint_vae(instructions, pool, config)
    z = vae.embed(instructions.float(), [[0, 1], [2], [], [3, 4, 5], [6], [7, 8]]).detach().numpy()
    assert z.shape == (6, 20)
    errors = rng.uniform(0.2, 0.8, size=6)
    for deep in (False, True):
        gp = JointPromptGP(z, errors, np.full(6, 100), JointGpConfig(epochs=30, inst_dim=12, deep_kernel=deep))
        assert [len(s) for s in gp.model.lengthscales()] == [12, 8]
        assert gp.lengthscale_ratio() > 0 and np.isfinite(gp.predict(z)[0]).all()
        assert (gp.model.features is not None) == deep


def test_sets_are_padded_behind_a_set_token():
    ids, padding = pad_sets([[3, 1], []], num_slots=3)
    assert ids.tolist() == [[3, 1, -1], [-1, -1, -1]]
    assert padding.tolist() == [[False, False, False, True], [False, True, True, True]]
    with pytest.raises(ValueError, match="more than num_slots"):
        pad_sets([[1, 2, 3, 4]], num_slots=3)


def test_slot_targets_match_members_to_their_likeliest_slots():
    logits = torch.full((1, 3, 6), -5.0)  # 3 slots over a pool of 5 + "empty"
    logits[0, 0, 4] = logits[0, 1, 2] = logits[0, 2, 5] = 5.0
    targets = slot_targets(logits, torch.tensor([[2, 4, -1]]))
    assert targets.tolist() == [[4, 2, 5]]  # slot 0 takes 4, slot 1 takes 2, slot 2 stays empty


def test_vae_dimensions_and_exemplar_decoding():
    torch.manual_seed(0)
    pool = torch.randn(7, 12)
    vae = StructureAwareVAE(12, pool, num_slots=4)
    z = vae.embed(torch.randn(3, 12), [[0, 5], [], [1, 2, 3, 6]])
    assert z.shape == (3, JOINT_DIM)
    assert vae.decode_instruction(z).norm(dim=-1).detach().numpy() == pytest.approx(np.ones(3), abs=1e-5)
    assert vae.slot_logits(z).shape == (3, 4, 8)
    sets = vae.decode_exemplars(z)
    assert all(len(s) == len(set(s)) <= 4 and all(0 <= i < 7 for i in s) for s in sets)
    assert set_f1([[1, 2], []], [[2, 3], []]) == pytest.approx((0.5 + 1.0) / 2)


def test_training_learns_to_decode_exemplar_sets():
    torch.manual_seed(0)
    instructions, pool = torch.randn(20, 16), torch.randn(6, 16)
    config = JointVaeConfig(epochs=60, patience=60, samples=300, num_slots=3, batch_size=50)
    vae, result = train_joint_vae(instructions, pool, config)
    assert result.exemplar_f1 > 0.7 and result.inst_cosine > 0.5
    assert result.epochs_trained <= 60


def test_propose_exemplars_returns_a_decodable_set_per_instruction():
    torch.manual_seed(0)
    vae = StructureAwareVAE(12, torch.randn(9, 12), num_slots=3)
    z, errors = synthetic(20)
    gp = JointPromptGP(z, errors, np.full(20, 100), JointGpConfig(epochs=20))
    out = propose_exemplars(vae, gp, torch.randn(2, 12), steps=3, restarts=2)
    assert len(out) == 2
    for ids, value in out:
        assert len(ids) <= 3 and all(0 <= i < 9 for i in ids) and np.isfinite(value)


class LineVae:
    """A stand-in VAE for the logic of stage 2: z_ex[0] alone decodes to one of three sets
    ([0] below -0.5, [1] in between, [2] above 0.5), and each set encodes back to -1, 0 or 1."""

    num_slots, inst_dim, ex_dim = 3, INST_DIM, EX_DIM

    def encode(self, inst, ids, padding):
        return torch.zeros(len(inst), JOINT_DIM), torch.zeros(len(inst), JOINT_DIM)

    def joint(self, z):
        return z

    def decode_exemplars(self, z):
        return [[0] if v < -0.5 else [1] if v < 0.5 else [2] for v in z[:, INST_DIM].tolist()]

    def embed(self, inst, sets):
        z = torch.zeros(len(sets), JOINT_DIM)
        z[:, INST_DIM] = torch.tensor([float(s[0] - 1) for s in sets])
        return z


def test_propose_exemplars_climbs_log_ei_and_keeps_the_best_decoded_set():
    rng = np.random.default_rng(0)
    z = np.zeros((30, JOINT_DIM))
    z[:, INST_DIM:] = rng.normal(size=(30, EX_DIM))
    errors = np.clip(0.5 - 0.25 * z[:, INST_DIM], 0.02, 0.98)  # set [2] (z_ex[0] above 0.5) is best
    gp = JointPromptGP(z, errors, np.full(30, 20), JointGpConfig(epochs=200))
    inst = torch.zeros(1, 4)
    # gradient steps from one start climb to the best set (a reversed gradient descends to [0])
    assert propose_exemplars(LineVae(), gp, inst, steps=40, restarts=1)[0][0] == [2]
    # with one step, the random starts decode to several sets and the best one is kept
    [(ids, value)] = propose_exemplars(LineVae(), gp, inst, steps=1, restarts=8)
    assert ids == [2] and value == pytest.approx(float(gp.log_ei(LineVae().embed(inst, [[2]]).numpy())[0]))
