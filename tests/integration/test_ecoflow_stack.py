"""EcoFlow through the services on loopback, as a user drives it: the corpus recipe embeds text
through the encoder service, `promptopt flow train` trains on the surrogate, `promptopt flow
validate --decode` samples and decodes, `promptopt run ecoflow` optimises. The replay backend
scores over the 100 recorded instructions and the decoder's nearest-text backend keeps decoded
prompts among them."""

from __future__ import annotations

import json

import pytest

from services.cli import main as cli
from services.common.launcher import LocalStack
from services.encoder import corpus
from services.llm_eval.replay import convert_results, load_table
from tests.integration.harness import run_cli

pytestmark = pytest.mark.slow


def test_corpus_train_validate_and_run_ecoflow_through_the_services(tmp_path_factory, datasets_dir, tmp_path, capsys):
    state = tmp_path_factory.mktemp("ecoflow-stack")
    convert_results(datasets_dir / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json", state / "table.jsonl")
    pool = state / "pool.json"
    pool.write_text(json.dumps([instruction for instruction, _ in load_table(state / "table.jsonl")]))
    env = {
        "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir),
        "PROMPTOPT_LLM_EVAL_BACKEND": "replay",
        "PROMPTOPT_LLM_EVAL_TASK_MODEL": str(state / "table.jsonl"),
        "PROMPTOPT_DECODER_BACKEND": "nearest",
    }
    names = ("encoder", "decoder", "llm_eval", "surrogate", "optimizer")
    with LocalStack(state, names=names, port_offset=1400, env=env) as stack:
        data = state / "corpus.pt"
        command = ["--sources", "recorded,ape", "--output", str(data), "--encoder", stack.address("encoder")]
        assert corpus.main(command) == 0
        # its size and sources: the 100 recorded instructions and hbbops_dev's 12, then the APE pool's 900 others
        assert "1012 texts (recorded: 112, ape: 900) embedded with" in capsys.readouterr().out
        addresses = ["--surrogate", stack.address("surrogate"), "--results-dir", str(tmp_path)]
        train = ["flow", "train", "--data", str(data), "--epochs", "6", "--batch-size", "128", "--normalize"]
        assert cli.main([*addresses, *train, "--hidden-dim", "64", "--num-blocks", "2", "--lr", "0.002"]) == 0
        [curves] = tmp_path.glob("flow-*.json")
        report = json.loads(curves.read_text())
        assert [h["epoch"] for h in report["history"]] == list(range(1, 7))
        assert curves.with_suffix(".png").stat().st_size > 1000
        checkpoint = report["flow_run"]  # the training run's id names its model; no host path is shown
        assert report["best_checkpoint"] == f"flows/{checkpoint}/best_flow.pt" and curves.stem == checkpoint
        assert (state / "volumes" / "surrogate-state" / "flows" / checkpoint / "best_flow.pt").is_file()
        validate = ["flow", "validate", "--checkpoint", checkpoint, "--n-samples", "12", "--decode"]
        validate += ["--num-steps", "20", "--seed-texts", str(pool)]
        models = ["--decoder", stack.address("decoder"), "--encoder", stack.address("encoder")]
        assert cli.main([*addresses, *models, *validate]) == 0
        [validation] = tmp_path.glob("flow-validate-*.json")
        checked = json.loads(validation.read_text())
        assert len(checked["per_sample_nearest_train_l2"]) == 12 and checked["heldout_nearest_l2"] > 0
        assert len(checked["decoded"]["texts"]) == 12 and all(-1 <= c <= 1 for c in checked["decoded"]["cosine"])
        assert validation.with_suffix(".png").stat().st_size > 1000
        results = tmp_path / "run"
        args = ["ecoflow", "--debug", "--flow-checkpoint", checkpoint, "--initial-pool", str(pool)]
        args += ["--split", "test[:50%]", "--test-split", "test[50%:]", "--fidelity", "20", "--test-fidelity", "20"]
        doc = run_cli(stack, results, *args)
    assert doc["state"] == "RUN_STATE_SUCCEEDED"
    iterations = doc["iterations"]
    assert len(iterations) == 2 and all(len(it["samples"]) == 2 for it in iterations)  # debug: 2 x 2
    assert all(s["instruction"] in pool.read_text() for it in iterations for s in it["samples"])
    assert doc["decode_round_trip"]["mean_cosine"] is not None and doc["held_out"]["test_questions"] == 20
