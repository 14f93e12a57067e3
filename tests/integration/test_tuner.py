"""BOLT tuning through the services on loopback (encoder, llm_eval replaying the recorded
hbbops_dev grid, surrogate, optimizer, tuner): a quick tuning over all four phases whose best
config `promptopt run lipo-e --config` loads, and the faults: a worker SIGKILLed mid-trial, the
coordinator SIGKILLed and resumed, a cancelled tuning continued with `tune --resume RUN_ID`. The
CLI runs as a remote client: it uploads the grid and corpus and writes the results it is sent."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState
from promptopt.operations.v1 import operations_pb2
from promptopt.tuner.v1 import tuner_pb2

from services.cli import main as cli
from services.common.config import ClientConfig
from services.common.launcher import LocalStack
from services.llm_eval.replay import convert_grid
from services.tuner.client import TunerClient
from tests.integration.harness import metric, scrape

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]
FAST = {"heartbeat_seconds": 1, "grace_seconds": 3, "budget": {"scorer_epochs": 60}}
GATES = {  # the seed's checkpoint gates, written out
    "vae": lambda m: m["retrieval_accuracy_at_8"] >= 0.85 and m["lipschitz_constant"] < 10,
    "scorer": lambda m: m["ndcg_at_8"] >= 0.70,
    "gp": lambda m: m["spearman_correlation"] >= 0.40,
    "inference": lambda m: m["final_accuracy"] >= 0.915,
}
TERMINAL = (
    operations_pb2.RUN_STATE_SUCCEEDED,
    operations_pb2.RUN_STATE_FAILED,
    operations_pb2.RUN_STATE_CANCELLED,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, datasets_dir):
    state = tmp_path_factory.mktemp("tuner-stack")
    convert_grid(datasets_dir / "hbbops_dev", state / "grid.jsonl")
    env = {
        "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir),
        "PROMPTOPT_LLM_EVAL_BACKEND": "replay",
        "PROMPTOPT_LLM_EVAL_TASK_MODEL": str(state / "grid.jsonl"),
        "PROMPTOPT_DATASETS_DIR": str(datasets_dir),
    }
    names = ("encoder", "llm_eval", "surrogate", "optimizer", "tuner")
    with LocalStack(state, names=names, port_offset=1300, env=env) as running:
        yield running


def output_of(stack, run_id: str) -> Path:
    """A tuning's output directory on the tuner (where the test looks; clients are sent content)."""
    return Path(stack.services["tuner"].env["PROMPTOPT_TUNER_STORE_PATH"]).parent / run_id


def start(stack, **fields) -> str:
    with TunerClient(ClientConfig(stack.address("tuner"), retry_seconds=60)) as client:
        request = tuner_pb2.StartRunRequest(config_json=json.dumps({**FAST, **fields}))
        return client.start(request).run_id


def run_state(stack, run_id: str) -> operations_pb2.Run:
    with TunerClient(ClientConfig(stack.address("tuner"), retry_seconds=60)) as client:
        return client.get(run_id)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def finished(stack, run_id: str, timeout: float = 600) -> operations_pb2.Run:
    run = wait_for(lambda: (r := run_state(stack, run_id)).state in TERMINAL and r, timeout, f"run {run_id} to end")
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED, run.error
    return run


def study(out: Path, run_id: str, phase: str) -> optuna.Study:
    return optuna.load_study(study_name=f"{run_id}-{phase}", storage=f"sqlite:///{out / 'optuna.db'}")


def starts(out: Path) -> list[dict]:
    path = out / "trials" / "runs.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def complete(s: optuna.Study) -> list:
    return [t for t in s.get_trials() if t.state == TrialState.COMPLETE]


def completed(out: Path, run_id: str) -> list:
    """The phase's completed trials; none while its study is not made yet (or while the tuner
    creates the storage's tables: a reader's own create would race it)."""
    if not (out / "optuna.db").is_file():
        return []
    try:
        return complete(study(out, run_id, "scorer"))
    except (KeyError, sqlalchemy.exc.OperationalError):
        return []


def test_quick_tuning_over_all_phases_writes_the_seeds_tree_and_a_loadable_best_config(
    stack, tmp_path, datasets_dir, capsys, monkeypatch
):
    """From a client directory the tuner cannot see: its own copy of the grid and corpus (one
    instruction fewer), uploaded by `tune --grid --corpus`."""
    client = tmp_path / "client"
    shutil.copytree(datasets_dir / "hbbops_dev", client / "grid")
    corpus = json.loads((datasets_dir / "prompts" / "ape_instructions_1000.json").read_text())
    (client / "corpus.json").write_text(json.dumps(corpus[1:]))
    monkeypatch.chdir(client)
    tune = ["tune", "--quick", "--trials-per-phase", "2", "--grid", "grid", "--corpus", "corpus.json"]
    code = cli.main(["--tuner", stack.address("tuner"), "--results-dir", "results", *tune])
    printed = capsys.readouterr().out
    assert code == 0, printed
    run_id = re.search(r"started tuning run (\S+)", printed).group(1)
    out = output_of(stack, run_id)
    state = json.loads((out / "coordinator_state.json").read_text())
    assert state["settings"]["grid_artifact"] and state["settings"]["corpus_artifact"]  # the uploads, by id
    vae_study = study(out, run_id, "vae")
    grid_instructions = json.loads((client / "grid" / "instructions.json").read_text())
    used = [t for t in corpus[1:] if t not in grid_instructions][: state["settings"]["budget"]["corpus_size"]]
    assert vae_study.user_attrs["inputs"]["corpus"] == used  # what the workers read: the upload's part they train on
    local = client / "results" / run_id  # the CLI wrote what it was sent
    assert (local / "best_config.yaml").read_text() == (out / "best_config.yaml").read_text()
    assert (local / "tuning_report.md").read_text() == (out / "tuning_report.md").read_text()
    assert (local / "tuning_report.png").stat().st_size > 1000
    assert state["completed_phases"] == ["vae", "scorer", "gp", "inference"]
    for phase, group_metrics in {
        "vae": [
            "reconstruction_cosine",
            "reconstruction_mse",
            "kl_divergence",
            "retrieval_accuracy_at_8",
            "lipschitz_constant",
            "percentile10_cosine",
        ],
        "scorer": ["ndcg_at_8", "mrr", "selection_loss", "exemplar_diversity", "exemplar_variance"],
        "gp": ["spearman_correlation", "rmse", "calibration_error", "lengthscale_ratio", "nll_heldout"],
        "inference": [
            "system_gap",
            "rejection_rate",
            "improvement_rate",
            "best_error_rate",
            "convergence_speed",
            "final_accuracy",
            "sample_efficiency",
            "wall_clock_time",
            "gpu_memory_peak",
        ],
    }.items():
        result = json.loads((out / "phase_results" / f"{phase}.json").read_text())
        measured = {m["name"]: m for m in result["metrics"]}
        assert sorted(measured) == sorted(group_metrics), phase  # each real, computed by its phase
        values = {name: m["value"] for name, m in measured.items()}
        if phase == "inference":  # the winner's held-out accuracy is reported beside, never tuned on
            held_out = result["reported"]["heldout_accuracy"]
            assert (
                0 <= held_out <= 1
                and f"| heldout_accuracy | inference (reported) | {held_out} |"
                in (out / "tuning_report.md").read_text()
            )
        if phase == "inference":  # on CPU no service holds GPU memory: reported as not measured
            assert (
                values.pop("gpu_memory_peak") is None
                and "| gpu_memory_peak | end_to_end | not measured |" in (out / "tuning_report.md").read_text()
            )
        assert result["gate_passed"] == GATES[phase](values) and result["trials"]["complete"] >= 2
        trial_dirs = sorted((out / "trials").glob(f"{phase}_*_*"))
        assert len(trial_dirs) >= 2 and all(
            (d / "metrics.json").is_file() and (d / "config.yaml").is_file() for d in trial_dirs
        )
    report = (out / "tuning_report.md").read_text()
    for phase, result in state["phase_results"].items():  # the report and the CLI say which gates passed
        row = next(line for line in report.splitlines() if line.startswith(f"| {phase} | {result['objective']} |"))
        assert row.endswith("| yes |") == result["gate_passed"] != ("| NO: " in row), row
    missed = [p for p, r in state["phase_results"].items() if not r["gate_passed"]]
    assert printed.count("MISSED:") == len(missed)
    assert (out / "tuning_report.png").stat().st_size > 1000 and (out / "trials" / "heartbeat.json").is_file()
    exported = scrape(stack.services["tuner"].metrics_port)  # the run's gauges (labels in name order)
    run = f'run="{state["settings"]["study_prefix"]}"'
    for phase, result in state["phase_results"].items():
        assert (
            metric(exported, "promptopt_tuner_trials", f'phase="{phase}",{run},state="complete"')
            == (result["trials"]["complete"])
        )
        assert metric(exported, "promptopt_tuner_best_objective", f'phase="{phase}",{run}') == pytest.approx(
            result["best_value"]
        )
    best = yaml.safe_load((out / "best_config.yaml").read_text())["lipo_e"]
    for phase, result in state["phase_results"].items():  # each phase's best trial set its parameters
        assert {k: best[k] for k in result["best_params"]} == result["best_params"], phase
    assert 4.0 <= best["ucb_beta"] <= 16.0 and best["instruction_latent_dim"] in (12, 16, 24, 32)
    # the best config is a LIPO-E config: run it (grid mode on the replay needs the scorer off)
    grid = datasets_dir / "hbbops_dev"
    args = [
        "--optimizer",
        stack.address("optimizer"),
        "--results-dir",
        str(tmp_path),
        "run",
        "lipo-e",
        "--config",
        str(local / "best_config.yaml"),
    ]
    args += ["--instructions", str(grid / "instructions.json"), "--exemplar-sets", str(grid / "exemplar_sets.json")]
    args += [
        "--no-use-scorer",
        "--split",
        "test[:50%]",
        "--test-split",
        "test[50%:]",
        "--fidelity",
        "40",
        "--test-fidelity",
        "40",
    ]
    args += ["--vae-epochs", "5", "--gp-epochs", "50", "--iterations", "1", "--no-watch"]
    assert cli.main(args) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    with cli.OptimizerClient(ClientConfig(stack.address("optimizer"))) as client:
        list(client.watch(run_id))
        run = client.get(run_id)
    assert run.state == operations_pb2.RUN_STATE_SUCCEEDED, run.error
    config = json.loads(run.config_json)["algorithm"]
    assert config["acquisition"] == "ucb" and config["ucb_beta"] == best["ucb_beta"]
    assert config["instruction_latent_dim"] == best["instruction_latent_dim"]


def test_a_worker_killed_mid_trial_has_its_trial_retried_and_no_trial_runs_twice(stack):
    run_id = start(stack, phases=["scorer"], trials_per_phase=6, workers=2)
    out = output_of(stack, run_id)
    victim = wait_for(lambda: len(starts(out)) >= 2 and starts(out)[-1], 120, "two trials to start")
    os.kill(int(victim["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    finished(stack, run_id)
    s = study(out, run_id, "scorer")
    killed = s.trials[victim["trial"]]
    assert killed.state == TrialState.FAIL
    retries = [t for t in s.trials if RetryFailedTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert len(complete(s)) >= 6
    numbers = [line["trial"] for line in starts(out)]
    assert len(numbers) == len(set(numbers))  # no trial (the waiting baseline, the retry) was started twice
    assert len({line["worker"] for line in starts(out)}) >= 3  # two workers and the killed one's replacement
    log = (out / "coordinator.log").read_text()
    assert "exited with -9; restarting it" in log
    heartbeat = json.loads((out / "trials" / "heartbeat.json").read_text())
    assert heartbeat["phase"] == "scorer" and heartbeat["trials"]["stale"] >= 1


def test_a_killed_coordinator_resumes_and_a_cancelled_tuning_continues_with_resume(stack, tmp_path, capsys):
    run_id = start(stack, phases=["scorer"], trials_per_phase=5, workers=1)
    out = output_of(stack, run_id)
    wait_for(lambda: len(completed(out, run_id)) >= 2, 180, "two finished trials")
    stack.kill("tuner")  # SIGKILL: its worker is stopped too (it dies with its parent)
    done_before = {t.number for t in complete(study(out, run_id, "scorer"))}
    stack.start("tuner")
    stack.wait_serving("tuner", 120)
    finished(stack, run_id)  # resumed at start-up
    s = study(out, run_id, "scorer")
    numbers = [line["trial"] for line in starts(out)]
    assert all(numbers.count(n) == 1 for n in done_before)  # no finished trial ran again
    assert len(complete(s)) >= 5
    # cancelled mid-phase, then `promptopt tune --resume RUN_ID` continues the same studies
    run_id = start(stack, phases=["scorer"], trials_per_phase=4, workers=1)
    out = output_of(stack, run_id)
    wait_for(lambda: len(completed(out, run_id)) >= 1, 180, "a finished trial")
    with TunerClient(ClientConfig(stack.address("tuner"))) as client:
        client.cancel(run_id)
    wait_for(lambda: run_state(stack, run_id).state == operations_pb2.RUN_STATE_CANCELLED, 120, "the cancel")
    done_before = {t.number for t in complete(study(out, run_id, "scorer"))}
    capsys.readouterr()
    tuner = ["--tuner", stack.address("tuner"), "--results-dir", str(tmp_path)]
    assert cli.main([*tuner, "tune", "--resume", run_id]) == 0
    s = study(out, run_id, "scorer")  # the same study, continued
    numbers = [line["trial"] for line in starts(out)]
    assert all(numbers.count(n) == 1 for n in done_before) and len(complete(s)) >= 4
    assert json.loads((out / "coordinator_state.json").read_text())["completed_phases"] == ["scorer"]


def test_a_worker_outside_the_tuner_follows_its_studies_and_shares_the_trials(stack):
    """`python -m services.tuner.worker --follow PREFIX` (the Kubernetes worker Job's command),
    started beside the tuner's own worker on the same storage: both run trials, none twice, and its
    trial files land in the tuning's output directory."""
    run_id = start(stack, phases=["scorer"], trials_per_phase=6, workers=1)
    out = output_of(stack, run_id)
    storage = f"sqlite:///{out / 'optuna.db'}"
    command = [sys.executable, "-m", "services.tuner.worker", "--storage", storage, "--follow", run_id]
    follower = subprocess.Popen(
        command,  # no --output-dir: its trial files go to the tuning's own output directory
        env={**os.environ, **stack.services["tuner"].env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        finished(stack, run_id)
        output, _ = follower.communicate(timeout=300)
    finally:
        follower.kill()
    assert follower.returncode == 0, output
    ran = int(re.search(r"^(\d+) trials run$", output, re.M).group(1))
    lines = starts(out)
    assert ran >= 1 and sum(line["worker"].endswith(f":{follower.pid}") for line in lines) == ran
    numbers = [line["trial"] for line in lines]
    assert len(numbers) == len(set(numbers)) and len(complete(study(out, run_id, "scorer"))) >= 6
