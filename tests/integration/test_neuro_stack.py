"""The Neuro-Latent optimizer through the services on loopback (the compose file's cpu profile as
processes), as a user drives it: `promptopt neuro export` writes a training file from the
recorded evaluations, `promptopt neuro train` trains the rewriter on the surrogate,
`promptopt neuro optimize` rewrites a prompt, and `promptopt run neuro` searches with it, every
rewrite scored by the real CPU LLM and the winner reported on held-out questions."""

from __future__ import annotations

import json

import pytest

from services.cli import main as cli
from services.common.launcher import LocalStack
from tests.integration.harness import run_cli

pytestmark = pytest.mark.slow


def test_export_train_optimize_and_run_neuro_through_the_services(tmp_path_factory, datasets_dir, tmp_path, capsys):
    state = tmp_path_factory.mktemp("neuro-stack")
    env = {"PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir), "PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS": "48"}
    data = state / "neuro_training_data.json"
    assert cli.main(["neuro", "export", "--output", str(data)]) == 0
    exported = json.loads(data.read_text())
    # the worst quarter of the 100 recorded instructions and of the grid's 12, each with a teacher
    assert len(exported["distillation_pairs"]) == 25 + 3 == len(exported["triplets"])
    small = {k: v[:4] for k, v in exported.items()}
    data.write_text(json.dumps(small))
    with LocalStack(state, names=("llm_eval", "surrogate", "optimizer"), port_offset=1500, env=env) as stack:
        surrogate = ["--surrogate", stack.address("surrogate"), "--results-dir", str(tmp_path / "train")]
        train = ["neuro", "train", "--data", str(data), "--phase1-epochs", "1", "--phase2-epochs", "1"]
        assert cli.main([*surrogate, *train, "--batch-size", "4"]) == 0
        [report_path] = (tmp_path / "train").glob("neuro-*.json")
        report = json.loads(report_path.read_text())
        assert report["data"] == {"distillation_pairs": 4, "triplets": 4}
        assert report["final_checkpoint"] == f"{report_path.stem}/neuro_final_model.pt"  # named by run id
        capsys.readouterr()
        assert cli.main([*surrogate, "neuro", "optimize", "Solve it.", "--max-length", "16"]) == 0
        assert report["final_checkpoint"] in capsys.readouterr().out
        args = ["neuro", "--iterations", "1", "--rewrites-per-step", "2", "--max-length", "24"]
        args += ["--split", "test[:50%]", "--test-split", "test[50%:]", "--fidelity", "2", "--test-fidelity", "2"]
        doc = run_cli(stack, tmp_path / "run", *args)
    assert doc["state"] == "RUN_STATE_SUCCEEDED"
    steps = [c["step"] for c in doc["candidates"]]
    assert steps[0] == 0 and 1 <= steps.count(1) <= 2  # the start, then up to 2 new rewrites of it
    assert all(c["num_evaluated"] == 2 for c in doc["candidates"]) and doc["held_out"]["test_questions"] == 2
    assert doc["usage"]["llm_calls"] == 2 * len(doc["candidates"]) + 2
