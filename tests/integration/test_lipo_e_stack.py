"""`promptopt run lipo-e` through the six services on loopback: grid mode on the replay backend
over the hbbops_dev grid, and a --debug standard run on the real CPU LLM."""

from __future__ import annotations

import json
import shutil

import pytest

from services.cli import main as cli
from services.common.launcher import LocalStack
from services.llm_eval.replay import convert_grid
from tests.integration.harness import run_cli

pytestmark = pytest.mark.slow


def test_grid_mode_through_the_services_on_replay(tmp_path_factory, datasets_dir, tmp_path, capsys, monkeypatch):
    """A remote client: the CLI runs in its own directory with its own copies of the files, which
    it uploads as content; the run names them by id and no client path reaches the optimizer."""
    state = tmp_path_factory.mktemp("grid-stack")
    client = tmp_path_factory.mktemp("client")
    for name in ("instructions.json", "exemplar_sets.json"):
        shutil.copy(datasets_dir / "hbbops_dev" / name, client / name)
    monkeypatch.chdir(client)
    grid = datasets_dir / "hbbops_dev"
    convert_grid(grid, state / "grid.jsonl")
    env = {
        "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir),
        "PROMPTOPT_LLM_EVAL_BACKEND": "replay",
        "PROMPTOPT_LLM_EVAL_TASK_MODEL": str(state / "grid.jsonl"),
    }
    names = ("encoder", "llm_eval", "surrogate", "optimizer")
    with LocalStack(state, names=names, port_offset=1100, env=env) as stack:
        args = [
            "lipo-e",
            "--instructions",
            "instructions.json",
            "--exemplar-sets",
            "exemplar_sets.json",
            "--split",
            "test[:50%]",
            "--test-split",
            "test[50%:]",
            "--fidelity",
            "80",
            "--test-fidelity",
            "80",
            "--vae-epochs",
            "5",
            "--gp-epochs",
            "100",
        ]
        doc = run_cli(stack, tmp_path, *args)
        assert doc["state"] == "RUN_STATE_SUCCEEDED"
        assert doc["config"]["algorithm"]["mode"] == "grid"
        assert str(client) not in json.dumps(doc["config"]) and "instructions.json" not in json.dumps(doc["config"])
        assert len(doc["config"]["algorithm"]["instructions_artifact"]) == 32
        assert doc["hyperband"]["nvalid"] == 80 and doc["inference"] is None
        winner, held_out = doc["winner"], doc["held_out"]
        assert len(winner["exemplars"]) == 5 and held_out["exemplar_ids"] == winner["exemplar_ids"]
        assert held_out["test_questions"] == 80 and held_out["validation_score"] == doc["best_score"]
        assert any(c["exemplar_ids"] for c in doc["candidates"])
        assert "(+ 5 exemplars" in capsys.readouterr().out
        bad = cli.main(["--optimizer", stack.address("optimizer"), "run", *args[:5], "--num-slots", "4"])
        assert bad == 2 and "have more than num_slots=4" in " ".join(capsys.readouterr().out.split())


def test_debug_run_on_the_cpu_llm(tmp_path_factory, datasets_dir, tmp_path):
    env = {
        "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir),
        "PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS": "48",
        "PROMPTOPT_LLM_EVAL_N_CTX": "2048",
    }
    with LocalStack(tmp_path_factory.mktemp("debug-stack"), port_offset=1200, env=env) as stack:
        doc = run_cli(stack, tmp_path, "lipo-e", "--debug", "--test-fidelity", "3", "--decoder-steps", "1")
    assert doc["state"] == "RUN_STATE_SUCCEEDED"
    config = doc["config"]
    assert config["evaluation"]["split"] == "train[6154:]" and config["algorithm"]["qa_pool_size"] == 50
    assert doc["exemplar_pool"] == {"size": 50, "split": "train[:50]"}
    assert doc["hyperband"]["nvalid"] == 20 and doc["inference"]["iterations"] == 1
    assert doc["vae_quality_metrics"]["epochs_trained"] > 0
    assert doc["held_out"]["test_questions"] == 3 and doc["total_llm_calls"] > 20
