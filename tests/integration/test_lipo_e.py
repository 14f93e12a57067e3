"""LIPO-E on real parts in process: the replay backend over the hbbops_dev grid (12 instructions x
12 exemplar sets recorded with Qwen2.5-7B on GSM8K test; SQLite answer cache), the shipped
MiniLM embedder, the surrogate engine (StructureAwareVAE, JointPromptGP) and nearest-text decoding."""

import dataclasses
import json
import math

import pytest

from services.common.artifacts import FilesystemArtifactStore
from services.common.errors import NotFoundError
from services.common.types import Usage
from services.llm_eval.cache import AnswerCache
from services.llm_eval.client import MeteredLlm
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_grid, load_table
from services.optimizer.algorithms.base import EvaluationSettings
from services.optimizer.algorithms.inputs import INPUT_KINDS
from services.optimizer.algorithms.lipo_e import LipoEConfig, LipoEOptimizer
from tests.integration.harness import nearest_text_models

FAST = {"vae_epochs": 20, "vae_samples": 300, "gp_epochs": 150, "iterations": 0}
EVALUATION = EvaluationSettings(split="test[:50%]", fidelity=80, seed=3, test_split="test[50%:]", test_fidelity=100)


@pytest.fixture(scope="module")
def parts(datasets_dir, embedder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lipo_e")
    grid = datasets_dir / "hbbops_dev"
    convert_grid(grid, tmp / "table.jsonl")
    store = DatasetStore(datasets_dir)
    backend = ReplayBackend(load_table(tmp / "table.jsonl"), store.load("gsm8k", "test"))
    evaluator = LlmEvaluator(backend, backend, store, AnswerCache(tmp / "answers.sqlite"), batch_size=512)
    models = nearest_text_models(embedder)
    rows = [json.loads(line) for line in (grid / "grid.jsonl").read_text().splitlines()]
    recorded = {(r["instruction_id"], r["exemplar_set_id"]): r["error_rate"] for r in rows}
    artifacts = FilesystemArtifactStore(tmp / "artifacts", INPUT_KINDS)
    uploaded = {
        f"{kind}_artifact": artifacts.put(kind, "", (grid / f"{kind}.json").read_bytes()).artifact_id
        for kind in ("instructions", "exemplar_sets")
    }
    return {
        "tmp": tmp,
        "grid": grid,
        "evaluator": evaluator,
        "models": models,
        "recorded": recorded,
        "artifacts": artifacts,
        "uploaded": uploaded,
    }


def run(parts, fields, state=None, usage=None, stop_after=None, owner="", evaluation=EVALUATION):
    config = LipoEConfig.from_fields(
        {
            **FAST,
            "mode": "grid",
            **parts["uploaded"],
            **fields,
        }
    )
    usage = usage or Usage()
    events = []
    optimizer = LipoEOptimizer(
        config,
        evaluation,
        MeteredLlm(parts["evaluator"], usage),
        lambda kind, payload: events.append((kind, payload)),
        parts["models"],
        owner=owner,
        artifacts=parts["artifacts"],
    )
    state = state or optimizer.initial_state()
    while state["step"] < (stop_after or optimizer.total_steps()):
        state = optimizer.step(state)
    return optimizer, state, usage, events


def test_grid_mode_selects_a_pair_at_full_fidelity_and_reports_it_held_out(parts):
    optimizer, state, usage, events = run(parts, {})
    assert optimizer.total_steps() == 4  # data, VAE, Hyperband, held-out
    report = optimizer.report(state)
    hb = report["hyperband"]
    assert (hb["nvalid"], hb["smax"]) == (80, 3)
    sets = json.loads((parts["grid"] / "exemplar_sets.json").read_text())
    distinct = {(e["question"], e["answer"]) for s in sets for e in s}
    assert len(state["pairs"]) == 144 and len(state["pool"]) == len(distinct) < 60  # two sets share exemplars
    winner = optimizer.winner(state)
    assert winner["n"] == 80 and len(winner["exemplars"]) == 5
    # the winner is the best of the pairs measured at full fidelity, never a low-fidelity fluke
    full = [e for e in state["evaluations"] if e[1] == 80]
    assert 1 - winner["score"] == min(e[2] for e in full)
    held_out = state["held_out"]
    assert held_out["test_questions"] == 100 and held_out["exemplar_ids"] == winner["exemplar_ids"]
    best_prompt, _ = optimizer.best(state)  # the run's best prompt names its exemplars
    assert best_prompt == f"{winner['prompt']}\n(+ 5 exemplars: ids {winner['exemplar_ids']})"
    # the selected pair is good on the recorded full-split errors: below the grid's median
    instructions = json.loads((parts["grid"] / "instructions.json").read_text())
    pair = (instructions.index(winner["prompt"]), state["exemplar_sets"].index(winner["exemplar_ids"]))
    recorded = sorted(parts["recorded"].values())
    assert parts["recorded"][pair] < recorded[len(recorded) // 2]
    assert hb["gp_fits"] >= 1 and report["vae_quality_metrics"]["epochs_trained"] > 0
    assert any(kind == "candidate" and p["exemplar_ids"] for kind, p in events)


def test_grid_invbo_with_bolt_settings_realises_new_pairs_and_rejects_strays(parts):
    bolt = {
        "iterations": 3,
        "acquisition": "ucb",
        "ucb_beta": 8.0,
        "distance_weight": 1.0,
        "instruction_latent_dim": 12,
        "exemplar_latent_dim": 8,
        "vae_mse_weight": 0.3,
        "use_deep_kernel": True,
        "num_restarts": 4,
        "raw_samples": 64,
    }
    evaluation = dataclasses.replace(EVALUATION, seed=5)
    optimizer, state, usage, _ = run(parts, bolt, evaluation=evaluation)
    assert optimizer.total_steps() == 7 and optimizer._space.z.shape[1] == 20  # 12 + 8
    full = [e for e in state["evaluations"] if e[1] == 80]
    entries = state["inference"]
    assert [e["evaluated"] for e in entries] == [True] * 3 and all(e["rejected"] == 0 for e in entries)
    realised = [row[0] for row in full[-3:]]
    assert len(set(realised)) == 3 and not set(realised) & {row[0] for row in full[:-3]}  # new at full fidelity
    assert all(0 <= e["latent_gap"] and math.isfinite(e["acquisition"]) for e in entries)
    report = optimizer.report(state)
    assert report["inference"]["evaluated"] == 3 and report["inference"]["rejected"] == 0
    # a threshold no realisation can meet: every sample is rejected and resampled, nothing is paid for
    strict = {**bolt, "cosine_sim_threshold": 1.0}
    _, checkpoint, _, _ = run(parts, strict, stop_after=3, evaluation=evaluation)
    calls = usage.llm_calls
    again, state2, usage2, _ = run(parts, strict, checkpoint, evaluation=evaluation)
    inference = state2["inference"]
    assert [e["rejected"] for e in inference] == [4, 4, 4] and not any(e["evaluated"] for e in inference)
    assert "under cosine_sim_threshold 1.0" in inference[0]["reason"]
    assert usage2.llm_calls <= calls  # only the held-out check of the Hyperband winner may be new
    assert again.report(state2)["inference"]["best_error"] is None


def test_a_resumed_run_repays_no_llm_call_and_frees_its_models(parts):
    evaluation = dataclasses.replace(EVALUATION, seed=11)  # questions no other test asked
    _, checkpoint, _, _ = run(parts, {}, stop_after=2, evaluation=evaluation)
    saved = json.dumps(checkpoint)  # what the run store keeps
    optimizer, state, usage, _ = run(parts, {}, json.loads(saved), stop_after=3, owner="r1", evaluation=evaluation)
    assert usage.llm_calls > 0
    # a fresh optimizer (a restarted service: models retrained from the checkpoint) redoes the step
    again, state2, usage2, _ = run(parts, {}, json.loads(saved), stop_after=3, owner="r2", evaluation=evaluation)
    assert usage2.llm_calls == 0 and usage2.cache_hits == usage.llm_calls + usage.cache_hits
    assert again.winner(state2) == optimizer.winner(state)
    engine, vae_id = parts["models"].surrogate, again._vae_id
    assert engine.registry.get(vae_id) is not None
    optimizer.release()
    again.release()
    with pytest.raises(NotFoundError):
        engine.registry.get(vae_id)
    assert engine.delete_owned("r1") == engine.delete_owned("r2") == 0


def test_standard_mode_config_and_splits():
    config = LipoEConfig()
    assert (config.num_slots, config.min_exemplars, config.qa_pool_size, config.ape.num_instructions) == (
        8,
        0,
        6154,
        2000,
    )
    assert (config.vae.beta, config.vae.epochs, config.gp.epochs, config.gp.lr, config.gp.patience) == (
        0.005,
        50000,
        1000,
        0.01,
        50,
    )
    assert (config.hyperband.bmin, config.hyperband.eta, config.hyperband.random_interleaving_prob) == (10, 2.0, 0.1)
    assert (config.acqf.candidate_instructions, config.acqf.exemplar_steps, config.acqf.exemplar_restarts) == (
        50,
        20,
        5,
    )
    assert config.pool_split() == "train[:6154]"
    assert config.seen_splits() == [("lipo_e.qa_pool_split", "train[:6154]")]
    sizes = {"train": 7473, "test": 1319}
    config.check_splits(EvaluationSettings(split="train[6154:]"), sizes)
    with pytest.raises(ValueError, match="shares questions with evaluation.split 'train\\[6000:\\]'"):
        config.check_splits(EvaluationSettings(split="train[6000:]"), sizes)


def test_bad_configs_fail_at_start_with_the_field_named(parts, tmp_path):
    grid, artifacts = {"mode": "grid", **parts["uploaded"]}, parts["artifacts"]
    sizes = {"train": 7473, "test": 1319}
    for fields, message in [
        ({"eta": 1.0}, r"lipo_e.eta must be in \[1.1, 100.0\], got 1.0"),
        ({"min_exemplars": 9}, r"lipo_e.min_exemplars must be in \[0, 8\]"),
        ({"instructions_artifact": grid["instructions_artifact"]}, "instructions_artifact is set but use_ape is on"),
        ({"exemplar_sets_artifact": grid["exemplar_sets_artifact"]}, "exemplar_sets_artifact is only read in grid"),
        ({"mode": "grid", "exemplar_sets_artifact": "a/b"}, "exemplar_sets_artifact must be an artifact id"),
    ]:
        with pytest.raises(ValueError, match=message):
            LipoEConfig.from_fields(fields)
    with pytest.raises(ValueError, match="lipo_e.exemplar_sets_artifact: sets .* have more than num_slots=4"):
        LipoEConfig.from_fields({**grid, "num_slots": 4}).load_inputs(artifacts)
    with pytest.raises(ValueError, match=r"content is not a valid exemplar_sets artifact: sets \[0\] show the same"):
        artifacts.put("exemplar_sets", "", json.dumps([[{"question": "q", "answer": "a"}] * 2]).encode())
    with pytest.raises(ValueError, match="content is not a valid instructions artifact: .* at least 2 are needed"):
        artifacts.put("instructions", "", json.dumps(["Solve it.", "Solve it."]).encode())
    with pytest.raises(ValueError, match="lipo_e.bmin 10 exceeds the full fidelity of 5"):
        LipoEConfig().check_splits(EvaluationSettings(split="train[6154:]", fidelity=5), sizes)
    with pytest.raises(ValueError, match="lipo_e.min_exemplars 3 exceeds qa_pool_size 2"):
        LipoEConfig(qa_pool_size=2, min_exemplars=3).check_splits(EvaluationSettings(split="train[6154:]"), sizes)
    # --debug keeps a grid's exemplar sets whole (its 3-slot default is for generated sets)
    debug_grid = LipoEConfig.from_fields({**grid, "debug": True})
    assert debug_grid.num_slots == 8 and LipoEConfig.from_fields({"debug": True}).num_slots == 3
