"""Seed 004's search space, phases and gates, the tier-by-tier samplers, and the settings'
validation (every message names the field)."""

import json

import optuna
import pytest

from services.tuner import hyperspace
from services.tuner.hyperspace import BASELINE, BY_NAME, PHASES, Gate, narrowed_space, parse_phases
from services.tuner.settings import TuningSettings
from services.tuner.study import counts, open_study, stage_sampler


def test_the_three_tiers_are_the_seeds():
    ranges = {p.name: (p.tier, p.low, p.high, p.choices) for p in hyperspace.PARAMS}
    assert ranges == {
        "vae_beta": (1, 0.005, 0.1, ()),
        "vae_mse_weight": (1, 0.1, 0.5, ()),
        "instruction_latent_dim": (1, None, None, (12, 16, 24, 32)),
        "exemplar_latent_dim": (1, None, None, (8, 12, 16, 24)),
        "ucb_beta": (1, 4.0, 16.0, ()),
        "mmr_lambda": (1, 0.3, 0.9, ()),
        "selection_weight": (1, 0.05, 0.4, ()),
        "set_transformer_heads": (2, None, None, (4, 8)),
        "set_transformer_hidden": (2, None, None, (64, 128, 256)),
        "num_inducing_points": (2, None, None, (4, 8)),
        "gp_lr": (2, 0.001, 0.01, ()),
        "use_deep_kernel": (2, None, None, (True, False)),
        "vae_lr": (2, 0.0001, 0.001, ()),
        "vae_epochs": (2, None, None, (20000, 50000, 100000)),
        "num_restarts": (3, None, None, (32, 64, 128)),
        "raw_samples": (3, None, None, (2048, 4096, 8192)),
        "cosine_sim_threshold": (3, 0.85, 0.95, ()),
        "distance_weight": (3, 1.0, 4.0, ()),
        "latent_noise_scale": (3, 0.01, 0.1, ()),
    }
    # every parameter belongs to exactly one phase, and the baseline lies inside the space
    owned = [p for phase in PHASES.values() for p in phase.params]
    assert sorted(owned) == sorted(BY_NAME)
    for name, param in BY_NAME.items():
        value = BASELINE[name]
        assert value in param.choices if param.choices else param.low <= value <= param.high


def test_phases_objectives_and_gates_are_the_seeds():
    assert list(PHASES) == ["vae", "scorer", "gp", "inference"]
    assert {p.name: p.objective for p in PHASES.values()} == {
        "vae": "retrieval_accuracy_at_8",
        "scorer": "ndcg_at_8",
        "gp": "spearman_correlation",
        "inference": "final_accuracy",
    }
    vae = PHASES["vae"].gate
    assert vae.failures({"retrieval_accuracy_at_8": 0.85, "lipschitz_constant": 9.9}) == []
    assert len(vae.failures({"retrieval_accuracy_at_8": 0.849, "lipschitz_constant": 10.0})) == 2
    for phase, name, bound in (
        ("scorer", "ndcg_at_8", 0.70),
        ("gp", "spearman_correlation", 0.40),
        ("inference", "final_accuracy", 0.915),
    ):  # each gate passes at its bound and fails just under it
        assert PHASES[phase].gate.failures({name: bound}) == [] and PHASES[phase].gate.failures({name: bound - 1e-6})
    # what each phase tunes (seed: VAE latent dims and lr; scorer Set Transformer; GP; inference)
    assert {p.name: set(p.params) for p in PHASES.values()} == {
        "vae": {"vae_beta", "vae_mse_weight", "instruction_latent_dim", "exemplar_latent_dim", "vae_lr", "vae_epochs"},
        "scorer": {
            "selection_weight",
            "mmr_lambda",
            "set_transformer_heads",
            "set_transformer_hidden",
            "num_inducing_points",
        },
        "gp": {"gp_lr", "use_deep_kernel"},
        "inference": {
            "ucb_beta",
            "num_restarts",
            "raw_samples",
            "cosine_sim_threshold",
            "distance_weight",
            "latent_noise_scale",
        },
    }
    assert {p.name for p in hyperspace.PARAMS if p.log} == {"gp_lr", "vae_lr"}  # learning rates on a log scale
    assert PHASES["inference"].gate.failures({}) == ["final_accuracy None (needs >= 0.915)"]
    assert Gate((("x", "<", 1.0),)).failures({"x": 0.5}) == []


def test_phases_and_narrowing_are_checked():
    assert parse_phases(["gp", "vae"]) == ("vae", "gp")
    with pytest.raises(ValueError, match=r"got unknown \['decoder'\]"):
        parse_phases(["vae", "decoder"])
    assert narrowed_space({"vae_beta": [0.01, 0.05]})["vae_beta"].low == 0.01
    assert narrowed_space({"vae_epochs": [20000]})["vae_epochs"].choices == (20000,)
    with pytest.raises(ValueError, match=r"space.vae_beta \[0.001, 0.05\] is outside the seed's range"):
        narrowed_space({"vae_beta": [0.001, 0.05]})
    with pytest.raises(ValueError, match="space.use_deep_kernel must be a non-empty subset"):
        narrowed_space({"use_deep_kernel": ["maybe"]})


def settings(tmp_path, **fields) -> TuningSettings:
    return TuningSettings.from_json(json.dumps(fields), "t", tmp_path)


def test_quick_settings_and_defaults(tmp_path):
    quick = settings(tmp_path, quick=True)
    assert quick.trials_per_phase == 5 and quick.budget.vae_epochs_cap > 0 and quick.phases == hyperspace.ORDER
    full = settings(tmp_path)
    assert full.trials_per_phase == 50 and full.budget.vae_epochs_cap == 0 and full.heartbeat_seconds == 60
    assert (full.grace_seconds, full.max_retry) == (180, 3)
    assert TuningSettings.from_dict(json.loads(full.to_json())) == full
    with pytest.raises(ValueError, match="grace_seconds must exceed heartbeat_seconds"):
        settings(tmp_path, heartbeat_seconds=60, grace_seconds=30)
    with pytest.raises(ValueError, match="budget.gp_epochs must be a positive integer"):
        settings(tmp_path, budget={"gp_epochs": 0})


def test_tiers_are_tuned_in_priority_order_with_the_others_held(tmp_path):
    """vae has tiers 1 and 2: the first half of the budget tunes tier 1 with tier 2 at the fixed
    config; then tier 2 is tuned with tier 1 held at the phase's best trial."""
    s = settings(tmp_path, phases=["vae"], trials_per_phase=4)
    fixed = {**BASELINE, "vae_lr": 0.0005, "vae_epochs": 20000}
    study = open_study(s, "vae", fixed)
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials()]
    assert waiting == [{p: fixed[p] for p in PHASES["vae"].params}]  # the baseline is enqueued first
    first, tier = stage_sampler(study, s, "vae", 0)
    assert tier == 1 and isinstance(first, optuna.samplers.PartialFixedSampler)
    assert first._fixed_params == {"vae_lr": 0.0005, "vae_epochs": 20000}

    def ask():
        trial = study.ask()
        for name in PHASES["vae"].params:
            BY_NAME[name].suggest(trial)
        return trial

    study.tell(ask(), 0.5)  # the enqueued baseline: trial 0 of tier 1's two
    study.sampler, _ = stage_sampler(study, s, "vae", 1)
    trial = ask()
    assert trial.params["vae_lr"] == 0.0005 and trial.params["vae_epochs"] == 20000
    study.tell(trial, 0.9)
    best = study.best_trial.params
    assert best == trial.params  # the higher objective wins (maximised)
    second, tier = stage_sampler(study, s, "vae", 2)
    assert tier == 2
    tier1 = ("vae_beta", "vae_mse_weight", "instruction_latent_dim", "exemplar_latent_dim")
    assert second._fixed_params == {name: best[name] for name in tier1}
    study.sampler = second
    trial = ask()
    assert all(trial.params[name] == best[name] for name in tier1)
    study.tell(trial, 0.1)
    assert counts(study)["complete"] == 3 and study.best_trial.params == best


def test_every_tuned_name_is_a_lipo_e_setting_and_the_baseline_comes_from_its_defaults(tmp_path):
    from services.optimizer.types import settings_of
    from services.tuner.hyperspace import BOLT_SWITCHES
    from services.tuner.inputs import TuningInputs
    from services.tuner.settings import TuningSettings
    from services.tuner.trials import TrialRunner

    declared = settings_of("lipo_e").declared()
    assert set(BY_NAME) <= set(declared) and set(BOLT_SWITCHES) <= set(declared)
    for name, param in BY_NAME.items():  # a default inside the space is the baseline's value
        if param.contains(declared[name].default):
            assert BASELINE[name] == declared[name].default, name
    assert BASELINE["raw_samples"] == 2048 and BASELINE["cosine_sim_threshold"] == 0.85  # LIPO-E's lie outside
    # the LIPO-E run an inference trial starts is a valid config (every field it sets exists)
    settings = TuningSettings.from_json("{}", "t", state_dir=tmp_path)
    inputs = TuningInputs.load(settings, None)  # the shipped grid: no store is read
    fields = TrialRunner(settings, inputs, None, None, None, "t").lipo_e_fields(dict(BASELINE), 0)
    artifacts = {"instructions_artifact": "0" * 32, "exemplar_sets_artifact": "1" * 32}  # uploaded per trial
    config = settings_of("lipo_e").from_fields({**fields, **artifacts})
    assert (config.mode, config.acqf.acquisition, config.acqf.ucb_beta) == ("grid", "ucb", BASELINE["ucb_beta"])
