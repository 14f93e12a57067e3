"""EcoFlow's BO loop on real parts in process: a flow trained on the shipped MiniLM embeddings of
the APE pool and the 100 recorded Qwen2.5-7B instructions, the surrogate engine (exact GP,
guided sampling), nearest-text decoding (decoded texts stay in the recorded table) and the
replay backend scoring them (SQLite answer cache)."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from services.common.artifacts import FilesystemArtifactStore
from services.common.types import Usage
from services.flow.core import FlowConfig, FlowTrainer, save_flow
from services.flow.types import decode_round_trip
from services.llm_eval.cache import AnswerCache
from services.llm_eval.client import MeteredLlm
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_results, load_table
from services.optimizer.algorithms.base import EvaluationSettings
from services.optimizer.algorithms.ecoflow import EcoFlowConfig, EcoFlowOptimizer
from services.optimizer.algorithms.inputs import INPUT_KINDS
from tests.integration.harness import nearest_text_models

SMALL_FLOW = FlowConfig(hidden_dim=128, num_blocks=2, time_embed_dim=32, batch_size=128, lr=2e-3, normalize=True)


@pytest.fixture(scope="module")
def parts(datasets_dir, embedder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ecoflow")
    recorded = datasets_dir / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json"
    convert_results(recorded, tmp / "table.jsonl")
    table = load_table(tmp / "table.jsonl")
    pool = [instruction for instruction, _ in table]
    artifacts = FilesystemArtifactStore(tmp / "artifacts", INPUT_KINDS)
    pool_artifact = artifacts.put("instructions", "pool.json", json.dumps(pool).encode()).artifact_id
    ape = json.loads((datasets_dir / "prompts" / "ape_instructions_1000.json").read_text())
    trainer = FlowTrainer(torch.as_tensor(np.asarray(embedder.encode(pool + ape))), SMALL_FLOW)
    for _ in range(15):
        trainer.run_epoch()
    save_flow(tmp / "best_flow.pt", trainer.model, SMALL_FLOW)
    store = DatasetStore(datasets_dir)
    backend = ReplayBackend(table, store.load("gsm8k", "test"))
    evaluator = LlmEvaluator(backend, backend, store, AnswerCache(tmp / "answers.sqlite"), batch_size=512)
    return {
        "tmp": tmp,
        "evaluator": evaluator,
        "models": nearest_text_models(embedder),
        "embedder": embedder,
        "artifacts": artifacts,
        "pool": pool_artifact,
    }


def optimizer_for(parts, **fields):
    config = EcoFlowConfig.from_fields(
        {
            "flow_checkpoint": str(parts["tmp"] / "best_flow.pt"),
            "initial_pool_artifact": parts["pool"],
            "debug": True,
            **fields,
        }
    )
    usage, events = Usage(), []
    optimizer = EcoFlowOptimizer(
        config,
        EvaluationSettings(split="test[:50%]", fidelity=40, seed=3, test_split="test[50%:]", test_fidelity=40),
        MeteredLlm(parts["evaluator"], usage),
        lambda kind, payload: events.append((kind, payload)),
        parts["models"],
        owner="ecoflow-test",
        artifacts=parts["artifacts"],
    )
    return optimizer, usage, events


def run(optimizer, state=None, stop_after=None):
    state = state or optimizer.initial_state()
    while state["step"] < (stop_after or optimizer.total_steps()):
        state = optimizer.step(state)
    return state


def test_the_bo_loop_scores_decoded_guided_samples_and_reports_the_round_trip(parts):
    optimizer, usage, events = optimizer_for(parts, iterations=3, batch_size=3)
    state = run(optimizer)
    assert optimizer.total_steps() == 1 + 3 + 1  # initial design, iterations, held-out
    observations = state["observations"]
    samples = [s for it in state["iterations"] for s in it["samples"]]
    fresh = [s for s in samples if not s["repeat"]]
    assert len(samples) == 9 and [o["source"] for o in observations] == ["initial"] * 4 + ["ecoflow"] * len(fresh)
    assert all(o["n"] == 40 for o in observations) and state["held_out"]["test_questions"] == 40
    known = {o["instruction"]: o["error"] for o in observations}
    for s in samples:  # a sample decoded to a prompt already scored keeps that score, adds no GP row
        assert s["error"] == known[s["instruction"]]
    assert [o["instruction"] for o in observations[4:]] == [s["instruction"] for s in fresh]
    grown = 4
    for iteration in state["iterations"]:
        assert iteration["guided_steps"] == 9  # debug: 10 steps, the first 4% (one) unguided
        assert iteration["gp_observations"] == grown
        grown += sum(not s["repeat"] for s in iteration["samples"])
        measured = [s["error"] for s in iteration["samples"]]
        assert iteration["best_error"] == min(iteration["best_error_before"], *measured)
    # the GP learns each decoded prompt under its re-encoded embedding (the default), and the
    # reported round trip is between the sample and that re-encoding
    decoded = [o for o in observations if o["source"] == "ecoflow"]
    again = np.asarray(parts["embedder"].encode([o["instruction"] for o in decoded]))
    assert np.allclose([o["embedding"] for o in decoded], again, atol=1e-5)
    assert all(-1 <= s["decode_cosine"] <= 1 and s["decode_l2"] >= 0 for s in samples)
    report = optimizer.report(state)
    assert report["decode_round_trip"]["mean_cosine"] == pytest.approx(np.mean([s["decode_cosine"] for s in samples]))
    top = optimizer.winner(state)
    assert top["score"] == 1 - min(o["error"] for o in observations) and report["winner"] == top
    assert sum(1 for kind, _ in events if kind == "candidate") == len(observations)  # every scored prompt, once


def test_without_score_reencoded_the_gp_keeps_the_sampled_embedding(parts):
    optimizer, _, _ = optimizer_for(parts, iterations=1, batch_size=2, score_reencoded=False)
    state = run(optimizer, stop_after=2)
    decoded = [o for o in state["observations"] if o["source"] == "ecoflow"]
    again = np.asarray(parts["embedder"].encode([o["instruction"] for o in decoded]))
    sampled = np.asarray([o["embedding"] for o in decoded])
    cosine, _ = decode_round_trip(sampled, again)
    reported = [s["decode_cosine"] for s in state["iterations"][0]["samples"] if not s["repeat"]]
    assert decoded and np.allclose(cosine, reported, atol=1e-5) and not np.allclose(sampled, again, atol=1e-3)


def test_guidance_lowers_the_lcb_of_the_loops_samples(parts):
    """The same iteration (same GP data, same noise) with lambda 0 and the seed's lambda 1."""
    lcb = {}
    for strength in (0.0, 1.0):
        optimizer, _, _ = optimizer_for(
            parts, iterations=1, batch_size=8, guidance_strength=strength, num_steps=20, n_initial=30
        )
        state = run(optimizer, stop_after=2)
        lcb[strength] = np.mean([s["lcb"] for s in state["iterations"][0]["samples"]])
    assert lcb[1.0] < lcb[0.0] - 0.005  # 30 scored prompts: with a handful the 384-D GP is flat


class BlankFirstDecoder:
    """The real nearest-text decoder, except that the first sample of each batch decodes to ""
    (what a generative decoder can return)."""

    def __init__(self, decoder):
        self.decoder = decoder

    def invert(self, targets, seed_texts, num_steps=0, beam_width=0):
        pairs, usage = self.decoder.invert(targets, seed_texts, num_steps, beam_width)
        return [("", 0.0), *pairs[1:]], usage


def test_an_empty_decoded_text_is_recorded_unscored_and_the_run_goes_on(parts):
    optimizer, _, _ = optimizer_for(parts, iterations=2, batch_size=3)
    optimizer.models = dataclasses.replace(optimizer.models, decoder=BlankFirstDecoder(optimizer.models.decoder))
    state = run(optimizer)
    for iteration in state["iterations"]:
        blank, *rest = iteration["samples"]
        assert blank["empty"] and blank["error"] is None and blank["decode_cosine"] == 0.0
        assert all(s["error"] is not None for s in rest)
    assert all(o["instruction"].strip() for o in state["observations"]) and state["held_out"] is not None


def test_a_resumed_run_continues_from_its_checkpoint_without_rescoring(parts):
    first, _, _ = optimizer_for(parts, iterations=2, batch_size=2)
    saved = json.loads(json.dumps(run(first, stop_after=2)))  # the run store's checkpoint is JSON
    resumed, _, events = optimizer_for(parts, iterations=2, batch_size=2)
    final = run(resumed, copy.deepcopy(saved), stop_after=3)
    assert [it["iteration"] for it in final["iterations"]] == [1, 2]
    fresh = sum(not s["repeat"] for s in final["iterations"][1]["samples"])
    assert final["observations"][: len(saved["observations"])] == saved["observations"]  # kept as they were
    assert len(final["observations"]) == len(saved["observations"]) + fresh
    assert sum(1 for kind, _ in events if kind == "candidate") == fresh  # only iteration 2's new prompts were scored


def test_bad_configs_name_the_field(parts):
    base = {"flow_checkpoint": "x.pt", "initial_pool_artifact": parts["pool"]}
    for fields, message in [
        ({"flow_checkpoint": ""}, "ecoflow.flow_checkpoint must name"),
        ({"batch_size": 0}, "ecoflow.batch_size must be in"),
        ({"method": "rk4"}, "ecoflow.method must be one of"),
        ({"zero_init_fraction": 2.0}, r"ecoflow.zero_init_fraction must be in \[0.0, 1.0\], got 2.0"),
        ({"n_initial": 1}, "ecoflow.n_initial must be >= 2"),
        (
            {"initial_pool_artifact": "/tmp/pool.json"},
            "ecoflow.initial_pool_artifact must be an artifact id",
        ),
        ({"guidance_strength": float("inf")}, "ecoflow.guidance_strength must be a finite number, got inf"),
        ({"alpha": -1.0}, r"ecoflow.alpha must be in \[0.0, 100.0\], got -1.0"),
        ({"num_steps": 1001}, r"ecoflow.num_steps must be in \[1, 1000\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            EcoFlowConfig.from_fields({**base, **fields})
    missing = EcoFlowConfig.from_fields({**base, "initial_pool_artifact": "f" * 32})
    with pytest.raises(ValueError, match="ecoflow.initial_pool_artifact 'f{32}' is no artifact on this service"):
        missing.pool(parts["artifacts"])
    for content, message in [
        (b"one instruction per line", "not a valid instructions artifact: Expecting value"),
        (b'{"instructions": ["Solve it."]}', "expected a JSON list of non-empty instruction strings"),
    ]:
        with pytest.raises(ValueError, match=message):
            parts["artifacts"].put("instructions", "pool", content)


def test_the_seeds_defaults():
    config = EcoFlowConfig(flow_checkpoint="best_flow.pt")
    assert (config.iterations, config.batch_size, config.guidance.num_steps, config.guidance.method) == (
        100,
        8,
        50,
        "heun",
    )
    assert (config.guidance.guidance_strength, config.guidance.alpha, config.guidance.zero_init_fraction) == (
        1.0,
        1.0,
        0.04,
    )
    assert config.score_reencoded and config.guidance.zero_init == "guidance"
