"""EcoFlow's flow model on a known distribution: the CFM loss falls, Heun samples match its
moments, guidance at lambda 0 is unguided sampling, the zero-guidance fraction is respected,
guidance by a real GP's LCB lowers the samples' LCB, and checkpoints round-trip and resume."""

import json
import re

import numpy as np
import pytest
import torch

from services.cli.main import build_parser
from services.common.artifacts import FilesystemArtifactStore
from services.flow.core import (
    FlowCache,
    FlowConfig,
    FlowTrainer,
    GuidedFlowSampler,
    integrate,
    load_flow,
    save_flow,
    zero_init_steps,
)
from services.flow.training import INPUT_KINDS, FlowTrainingJob, FlowTrainingSettings
from services.flow.types import GuidanceSettings
from services.surrogate.core import SonarGPSurrogate

DIM = 4
CONFIG = FlowConfig(hidden_dim=64, num_blocks=2, time_embed_dim=32, batch_size=128, lr=2e-3, normalize=True)


def known_data(n: int = 2000) -> torch.Tensor:
    """A correlated Gaussian far from N(0, I): mean -1.5..1.5, one strongly scaled direction."""
    generator = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.6, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.3, 0.4]])
    return torch.randn(n, DIM, generator=generator) @ mix.T + torch.linspace(-1.5, 1.5, DIM)


@pytest.fixture(scope="module")
def trained():
    trainer = FlowTrainer(known_data(), CONFIG)
    losses = [trainer.run_epoch() for _ in range(25)]
    return trainer, losses


def test_the_flow_matching_loss_decreases(trained):
    _, losses = trained
    assert losses[-1].train_loss < 0.85 * losses[0].train_loss
    assert min(h.val_loss for h in losses[-5:]) < 0.85 * losses[0].val_loss


def test_heun_samples_match_the_known_moments(trained):
    trainer, _ = trained
    data = known_data()
    samples = trainer.model.sample(4000, num_steps=50, method="heun", generator=torch.Generator().manual_seed(1))
    assert torch.allclose(samples.mean(0), data.mean(0), atol=0.12)
    assert torch.allclose(torch.cov(samples.T), torch.cov(data.T), atol=0.35)
    noise = torch.randn(4000, DIM, generator=torch.Generator().manual_seed(1))  # what it started from
    assert not torch.allclose(torch.cov(noise.T), torch.cov(data.T), atol=0.35)


def test_heun_is_second_order_and_euler_first_on_a_known_ode():
    """dz/dt = z from z(0)=1 gives e at t=1: halving the step cuts Euler's error ~2x, Heun's ~4x."""
    z0 = torch.ones(1, 1, dtype=torch.float64)

    def error(method, steps):
        return abs(float(integrate(lambda z, t, step: z, z0, steps, method)) - np.e)

    assert 1.8 < error("euler", 20) / error("euler", 40) < 2.2
    assert 3.6 < error("heun", 20) / error("heun", 40) < 4.4


def test_heun_evaluates_its_corrector_at_the_next_time():
    """dz/dt = t from z(0)=0 gives 0.5 at t=1: Heun (trapezoid in t) exactly, Euler (left sums) 0.5 - h/2."""
    z0 = torch.zeros(1, 1, dtype=torch.float64)

    def drift(z, t, step):
        return t.to(z.dtype)[:, None].expand_as(z)

    assert float(integrate(drift, z0, 10, "heun")) == pytest.approx(0.5, abs=1e-6)  # t is float32
    assert float(integrate(drift, z0, 10, "euler")) == pytest.approx(0.45, abs=1e-6)


def test_guidance_with_lambda_zero_is_unguided_sampling(trained):
    trainer, _ = trained
    sampler = GuidedFlowSampler(trainer.model, lcb=lambda x: x.sum(-1), guidance_strength=0.0)
    guided = sampler.sample(64, torch.Generator().manual_seed(5))
    plain = trainer.model.sample(64, 50, "heun", torch.Generator().manual_seed(5))
    assert torch.equal(guided, plain) and sampler.guided_steps == []


@pytest.mark.parametrize(("fraction", "steps", "unguided"), [(0.04, 50, 2), (0.1, 50, 5), (0.0, 50, 0), (0.04, 10, 1)])
def test_the_zero_guidance_fraction_is_respected(trained, fraction, steps, unguided):
    trainer, _ = trained
    calls = []

    def lcb(x):
        calls.append(1)
        return x.sum(-1)

    sampler = GuidedFlowSampler(trainer.model, lcb, 1.0, steps, "heun", fraction)
    sampler.sample(8, torch.Generator().manual_seed(0))
    assert zero_init_steps(fraction, steps) == unguided
    assert sampler.guided_steps == list(range(unguided, steps))
    assert len(calls) == 2 * (steps - unguided)  # Heun asks the drift twice per step


def test_cfg_zero_star_zero_init_zeroes_the_velocity_of_the_first_steps(trained):
    trainer, _ = trained
    seen = []

    def drift_probe(z, t, step):
        out = sampler.drift(z, t, step)
        seen.append((step, out.abs().max().item()))
        return out

    sampler = GuidedFlowSampler(trainer.model, None, 0.0, 50, "euler", 0.1, zero_init="velocity")
    integrate(drift_probe, torch.randn(8, DIM), 50, "euler")
    assert [s for s, size in seen if size == 0.0] == [0, 1, 2, 3, 4]
    assert all(size > 0 for s, size in seen if s >= 5)


def test_guided_samples_have_a_lower_lcb_than_unguided_ones(trained):
    """A real GP of a known error surface (error grows with the first coordinate)."""
    trainer, _ = trained
    data = known_data(400).numpy().astype(np.float64)
    errors = 1.0 / (1.0 + np.exp(-data[:40, 0]))  # low error where x0 is small
    gp = SonarGPSurrogate(data[:40], errors)

    def lcb(x):
        return gp.lcb(x, alpha=1.0)

    def mean_lcb(strength, seed=11):
        sampler = GuidedFlowSampler(trainer.model, lcb, strength, 30, "heun", 0.04)
        samples = sampler.sample(200, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return float(lcb(samples).mean()), samples

    unguided, plain = mean_lcb(0.0)
    guided, steered = mean_lcb(1.0)
    stronger, _ = mean_lcb(2.0)
    assert guided < unguided - 0.02 and stronger < guided
    assert float(steered[:, 0].mean()) < float(plain[:, 0].mean())  # moved toward the low-error side


def test_lcb_is_the_posterior_mean_minus_alpha_std():
    x = np.random.default_rng(0).normal(size=(12, 3))
    gp = SonarGPSurrogate(x, x[:, 0] ** 2)
    points = torch.as_tensor(np.random.default_rng(1).normal(size=(5, 3)))
    mean, var = gp.predict(points.numpy())
    assert np.allclose(gp.lcb(points, alpha=2.0).detach().numpy(), mean - 2.0 * np.sqrt(var), atol=1e-6)
    standardized = gp.lcb(points, alpha=2.0, standardized=True).detach().numpy()
    assert np.allclose(standardized * np.std(x[:, 0] ** 2, ddof=1), mean - 2.0 * np.sqrt(var), atol=1e-6)


def test_a_checkpoint_round_trips_and_training_resumes_where_it_stopped(tmp_path):
    data = known_data(600)
    config = FlowConfig(hidden_dim=32, num_blocks=1, time_embed_dim=16, batch_size=100, normalize=True)
    straight = FlowTrainer(data, config)
    for _ in range(3):
        straight.run_epoch()
    interrupted = FlowTrainer(data, config)
    interrupted.run_epoch()
    interrupted.run_epoch()
    save_flow(tmp_path / "last.pt", interrupted.model, config, trainer=interrupted.state())
    model, facts = load_flow(tmp_path / "last.pt")
    assert "model" not in facts["trainer"]  # the weights are stored once, as the checkpoint's model
    resumed = FlowTrainer(data, config)
    resumed.load_state(facts["trainer"], model)
    assert resumed.epoch == 2 and facts["config"] == config
    assert resumed.run_epoch() == straight.history[-1]  # the same third epoch, bit for bit
    one = model.sample(16, 10, "heun", torch.Generator().manual_seed(2))
    two = interrupted.model.eval().sample(16, 10, "heun", torch.Generator().manual_seed(2))
    assert torch.equal(one, two) and torch.equal(model.mean, interrupted.model.mean)


def test_a_run_trained_on_another_kind_of_device_resumes_with_a_fresh_noise_stream(tmp_path):
    """A GPU generator's state does not fit a CPU generator: the weights and optimizer carry over,
    the noise restarts from seed + 1 + epoch (a CUDA state would raise in set_state)."""
    data = known_data(400)
    config = FlowConfig(hidden_dim=32, num_blocks=1, time_embed_dim=16, batch_size=100)
    trainer = FlowTrainer(data, config)
    trainer.run_epoch()
    state = {**trainer.state(), "generator": torch.zeros(16, dtype=torch.uint8), "generator_device": "cuda"}
    resumed = FlowTrainer(data, config)
    resumed.load_state(state, trainer.model)
    expected = torch.Generator().manual_seed(config.seed + 1 + 1)
    assert resumed.epoch == 1 and torch.equal(resumed.generator.get_state(), expected.get_state())
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), trainer.model.parameters(), strict=True))


def test_the_flow_cache_holds_the_most_recently_used_models_and_reloads_changed_files(tmp_path):
    config = FlowConfig(hidden_dim=16, num_blocks=1, time_embed_dim=8)
    model = FlowTrainer(known_data(40), config).model
    paths = [tmp_path / f"{name}.pt" for name in "abc"]
    for path in paths:
        save_flow(path, model, config)
    cache = FlowCache(max_models=2)
    a, _ = cache.get(paths[0])
    b, _ = cache.get(paths[1])
    assert cache.get(paths[0])[0] is a  # a hit, and now the most recent
    cache.get(paths[2])  # evicts b, the least recently used
    assert cache.get(paths[0])[0] is a and cache.get(paths[1])[0] is not b
    save_flow(paths[0], model, config, epoch=7)  # rewritten at once, as a run's next best checkpoint is
    reloaded, facts = cache.get(paths[0])
    assert reloaded is not a and facts["epoch"] == 7


def test_bad_checkpoints_and_settings_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a flow checkpoint"):
        load_flow(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_flow(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="method"):
        integrate(lambda z, t, s: z, torch.zeros(1, 1), 5, "rk4")
    with pytest.raises(ValueError, match="zero_init_fraction"):
        zero_init_steps(1.5, 50)
    with pytest.raises(ValueError, match="needs a GP"):
        GuidedFlowSampler(FlowTrainer(known_data(50), CONFIG).model, None, 1.0)
    with pytest.raises(ValueError, match="batch_size"):
        FlowConfig(batch_size=0)


def test_the_surrogate_device_setting_is_checked():
    from services.surrogate.__main__ import SurrogateConfig

    assert SurrogateConfig().device == "cpu" and SurrogateConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        SurrogateConfig(device="gpu")


def test_guidance_is_the_lcb_gradient_through_the_normalisation():
    """For LCB(x) = w.x the drift's guidance in normalised z is exactly -w * std (dx/dz = std):
    evaluating the LCB on z, or taking the gradient in x units, would both differ."""
    trainer = FlowTrainer(known_data(400), CONFIG)
    w = torch.tensor([0.5, -1.0, 2.0, 0.25])
    sampler = GuidedFlowSampler(trainer.model, lambda x: x @ w, 1.0)
    z = torch.randn(3, DIM, generator=torch.Generator().manual_seed(1))
    expected = (-w * trainer.model.std).expand(3, DIM)
    assert torch.allclose(sampler.guidance(z), expected, atol=1e-6)
    assert not torch.allclose(trainer.model.std, torch.ones(DIM), atol=0.1)  # the normalisation matters here


def test_the_seeds_defaults_for_training_and_sampling():
    config = FlowConfig()
    assert (config.epochs, config.batch_size, config.normalize) == (50, 1024, False)
    sampler = GuidedFlowSampler(FlowTrainer(known_data(40), CONFIG).model, lambda x: x.sum(-1))
    assert (sampler.guidance_strength, sampler.num_steps, sampler.method) == (1.0, 50, "heun")
    assert (sampler.zero_steps, sampler.zero_init) == (2, "guidance")  # ceil(0.04 x 50)
    settings = GuidanceSettings()
    assert (settings.guidance_strength, settings.alpha, settings.num_steps) == (1.0, 1.0, 50)
    assert (settings.method, settings.zero_init_fraction, settings.zero_init) == ("heun", 0.04, "guidance")
    parser = build_parser()
    train = parser.parse_args(["flow", "train", "--data", "x.pt"])
    assert (train.epochs, train.batch_size, train.normalize) == (50, 1024, False)
    validate = parser.parse_args(["flow", "validate", "--checkpoint", "best_flow.pt"])
    assert (validate.n_samples, validate.num_steps, validate.method, validate.decode) == (100, 50, "heun", False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"guidance_strength": float("inf")}, "guidance_strength must be a finite number >= 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number >= 0"),
        ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
        ({"num_steps": 1001}, "num_steps must be in [1, 1000]"),
    ],
)
def test_guidance_settings_refuse_non_finite_and_out_of_range_values(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GuidanceSettings(**fields)


def test_a_run_that_died_after_saving_its_first_epoch_resumes_without_repeating_it(tmp_path):
    """The process saved last_flow.pt for epoch 1 and died before the run store recorded the step:
    the restarted job (step 0) finds its own checkpoint, keeps that epoch and trains no second one;
    another run pointed at the same directory is refused."""
    torch.save({"embeddings": known_data(300)}, tmp_path / "data.pt")
    artifacts = FilesystemArtifactStore(tmp_path / "artifacts", INPUT_KINDS)
    data = artifacts.put("embeddings", "data.pt", (tmp_path / "data.pt").read_bytes()).artifact_id
    fields = {"data_artifact": data, "epochs": 3, "hidden_dim": 16, "num_blocks": 1, "time_embed_dim": 8}
    settings = FlowTrainingSettings.from_json(json.dumps(fields), "run-1", tmp_path, artifacts)

    def job(run_id):
        return FlowTrainingJob(settings, lambda kind, payload: None, lambda: False, run_id)

    first = job("run-1")
    recorded = first.initial_state()
    after_crash = first.step(recorded)  # saved, then "lost" with the process
    restarted = job("run-1")
    state = restarted.step(restarted.initial_state())
    assert state["history"] == after_crash["history"] and restarted.trainer(1).epoch == 1
    with pytest.raises(ValueError, match="holds training run 'run-1''s checkpoints"):
        job("run-2").initial_state()
