"""LIPO's seed modes on real parts in process: the replay backend over the 100 recorded
Qwen2.5-7B instructions (SQLite answer cache), the shipped MiniLM embedder, the surrogate
engine (VAE, deep-kernel GP, BoTorch) and nearest-text decoding, which keeps every decoded
instruction inside the recorded table so the replay can score it."""

import json

import pytest

from services.common.artifacts import FilesystemArtifactStore
from services.common.types import Usage
from services.llm_eval.cache import AnswerCache
from services.llm_eval.client import MeteredLlm
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_results, load_table
from services.optimizer.algorithms.base import EvaluationSettings
from services.optimizer.algorithms.inputs import INPUT_KINDS
from services.optimizer.algorithms.lipo import LipoConfig, LipoOptimizer
from tests.integration.harness import nearest_text_models

FAST = {"debug": True, "vae_epochs": 40, "vae_patience": 40, "gp_epochs": 60, "gp_retrain_epochs": 20}


@pytest.fixture(scope="module")
def parts(datasets_dir, embedder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lipo")
    recorded = datasets_dir / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json"
    convert_results(recorded, tmp / "table.jsonl")
    table = load_table(tmp / "table.jsonl")
    (tmp / "ape_instructions.json").write_text(json.dumps([instruction for instruction, _ in table]))  # APE's cache
    store = DatasetStore(datasets_dir)
    backend = ReplayBackend(table, store.load("gsm8k", "test"))
    evaluator = LlmEvaluator(backend, backend, store, AnswerCache(tmp / "answers.sqlite"), batch_size=512)
    models = nearest_text_models(embedder)
    artifacts = FilesystemArtifactStore(tmp / "artifacts", INPUT_KINDS)
    uploaded = {
        "recorded": artifacts.put("evaluations", recorded.name, recorded.read_bytes()).artifact_id,
        "grid": artifacts.put("evaluations", "table.jsonl", (tmp / "table.jsonl").read_bytes()).artifact_id,
    }
    return {
        "tmp": tmp,
        "recorded": recorded,
        "evaluator": evaluator,
        "models": models,
        "artifacts": artifacts,
        "uploaded": uploaded,
    }


def run(parts, fields, fidelity=80, stop_after=None, state=None, usage=None, owner=""):
    config = LipoConfig.from_fields({**FAST, "ape_num_instructions": 100, **fields})
    usage = usage or Usage()
    events = []
    optimizer = LipoOptimizer(
        config,
        EvaluationSettings(split="test[:50%]", fidelity=fidelity, seed=3, test_split="test[50%:]"),
        MeteredLlm(parts["evaluator"], usage),
        lambda kind, payload: events.append((kind, payload)),
        parts["models"],
        owner=owner,
        state_dir=parts["tmp"],
        artifacts=parts["artifacts"],
    )
    state = state or optimizer.initial_state()
    while state["step"] < (stop_after or optimizer.total_steps()):
        state = optimizer.step(state)
    return optimizer, state, usage, events


def test_skip_hbbops_loads_evaluations_then_runs_invbo(parts):
    optimizer, state, usage, _ = run(
        parts, {"mode": "skip-hbbops", "hyperband_evals_artifact": parts["uploaded"]["recorded"], "iterations": 2}
    )
    report = optimizer.report(state)
    assert optimizer.total_steps() == 5 and report["hyperband"] is None  # APE, VAE, 2 InvBO, held-out
    # the loaded best (recorded on the whole test split) is re-scored on the 80 validation questions,
    # replacing its loaded row; the other 99 loaded rows only train the GP
    recorded = json.loads(parts["recorded"].read_text())["results"]
    recorded_best = max(recorded, key=lambda r: r["accuracy"])["instruction"]
    loaded = [o for o in state["observations"] if o["source"] == "skip-hbbops"]
    assert len(loaded) == 99 and recorded_best not in {o["instruction"] for o in loaded}
    incumbent = next(o for o in state["observations"] if o["source"] == "incumbent")
    assert incumbent["instruction"] == recorded_best and incumbent["n"] == 80
    assert report["inference"]["iterations"] == 2
    held_out = state["held_out"]
    assert held_out["test_split"] == "test[50%:]" and held_out["test_questions"] == 660
    # only the incumbent, InvBO candidates (80 validation questions each) and the held-out winner were paid for
    assert report["total_llm_calls"] == usage.llm_calls <= 3 * 80 + 660
    best_prompt, best_score = optimizer.best(state)
    comparable = [o for o in state["observations"] if o["source"] != "skip-hbbops"]
    assert {o["n"] for o in comparable} == {80}
    assert best_score == pytest.approx(1 - min(o["error"] for o in comparable))
    assert report["inference"]["history"][0]["incumbent_error_before"] == pytest.approx(incumbent["error"])
    assert (held_out["prompt"], held_out["validation_score"], held_out["validation_questions"]) == (
        best_prompt,
        best_score,
        80,
    )


def test_load_grid_takes_top_k(parts):
    optimizer, state, _, _ = run(
        parts, {"mode": "load-grid", "grid_artifact": parts["uploaded"]["grid"], "top_k": 25, "iterations": 1}
    )
    loaded = [o for o in state["observations"] if o["source"] == "load-grid"]
    assert len(loaded) == 24  # the top 25, the best of them re-scored as the incumbent
    assert [o["source"] for o in state["observations"]].count("incumbent") == 1
    errors = sorted(json.loads(line)["error_rate"] for line in (parts["tmp"] / "table.jsonl").read_text().splitlines())
    assert max(o["error"] for o in loaded) == pytest.approx(errors[24])
    assert min(o["error"] for o in loaded) == pytest.approx(errors[1])


def test_hyperband_only_and_resume_without_repaying(parts):
    fields = {"mode": "hyperband-only", "min_fidelity_pct": 0.4}
    optimizer, state, usage, events = run(parts, fields, fidelity=150, owner="run-hb")
    report = optimizer.report(state)
    assert optimizer.total_steps() == 4 and report["inference"] is None
    hyperband = report["hyperband"]
    assert (hyperband["nvalid"], hyperband["smax"], hyperband["budget"]) == (150, 3, 600)
    assert hyperband["gp_fits"] >= 1  # BO proposals once four instructions reached 40% of nvalid
    assert 0 < hyperband["llm_calls"] <= 4 * 600  # B per bracket, 4 brackets; the cache makes it less
    # bracket 3 runs 18, 37, 75, 150 questions: every bracket ends at full fidelity nvalid
    assert sorted(map(int, hyperband["evaluations_by_fidelity"])) == [18, 37, 75, 150]
    candidates = [p for kind, p in events if kind == "candidate"]
    assert len(candidates) == hyperband["evaluations"]
    # only full-fidelity scores compete: the winner is Hyperband's incumbent, never a 18-question fluke
    assert {c["comparable"] for c in candidates if c["num_evaluated"] < 150} == {False}
    assert optimizer.best(state) == (hyperband["best_instruction"], 1 - hyperband["best_error"])
    # the GP's data: each instruction's highest fidelity >= 40% of nvalid, with its real question count
    assert {o["n"] for o in state["observations"]} == {75, 150}
    # the surrogate holds the run's VAE and its latest GP only (superseded GPs were deleted), until it ends
    registry = parts["models"].surrogate.registry
    held = sorted(type(e.model).__name__ for e in registry._models.values() if e.owner == "run-hb")
    assert held == ["DeepKernelSurrogate", "InstructionVAE"]
    optimizer.release()
    assert not any(e.owner == "run-hb" for e in registry._models.values())
    # A restarted optimizer re-runs the Hyperband step from the checkpoint before it: same answers, all cached.
    checkpoint = json.loads(json.dumps({**state, "step": 2, "held_out": None}))
    _, again, usage_again, _ = run(parts, fields, fidelity=150, state=checkpoint)
    assert usage_again.llm_calls == 0 and usage_again.cache_hits > 0
    assert again["hyperband"]["best_instruction"] == state["hyperband"]["best_instruction"]


def test_a_restarted_surrogate_does_not_fail_the_run(parts):
    """Model ids live in the surrogate's memory; when it forgets them, the step retrains and repeats."""
    fields = {"mode": "skip-hbbops", "hyperband_evals_artifact": parts["uploaded"]["recorded"], "iterations": 2}
    optimizer, state, usage, events = run(parts, fields, stop_after=3)
    parts["models"].surrogate.registry._models.clear()  # what a surrogate restart does
    calls = usage.llm_calls
    state = optimizer.step(state)
    assert state["step"] == 4 and len(state["inference"]) == 2 and optimizer.total_steps() == 5
    assert any("surrogate lost a model" in p.get("message", "") for kind, p in events if kind == "progress")
    assert usage.llm_calls - calls <= 80  # at most the one new InvBO evaluation


def test_bad_modes_are_rejected():
    with pytest.raises(ValueError, match="lipo.mode"):
        LipoConfig(mode="fast")
    with pytest.raises(ValueError, match="lipo.hyperband_evals_artifact must be set in mode skip-hbbops"):
        LipoConfig(mode="skip-hbbops")
    with pytest.raises(ValueError, match="lipo.grid_artifact must be set in mode load-grid"):
        LipoConfig(mode="load-grid")
    with pytest.raises(ValueError, match="lipo.grid_artifact must be an artifact id"):
        LipoConfig(mode="load-grid", grid_artifact="/nonexistent.jsonl")
    with pytest.raises(ValueError, match="lipo.grid_artifact is only read in mode load-grid"):
        LipoConfig(grid_artifact="0" * 32)
    assert LipoConfig.from_fields({"debug": True, "iterations": 3}).iterations == 3  # user fields beat debug defaults
    assert LipoConfig.from_fields({"debug": True}).ape.num_instructions == 10
