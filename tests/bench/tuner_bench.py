"""`make bench` (tuner part): BOLT tuning through the services on loopback, llm_eval replaying
the recorded hbbops_dev grid, the quick CPU trial sizes.

1. Throughput: trials per hour of a tuning over all four phases with 1 and with 2 CPU worker
   processes (TRIALS per phase).
2. Coordinate descent against Optuna's default: one TPE study over all 19 parameters at once,
   each trial running the four phases' measurements of its config and maximising final
   accuracy, with the same budget in phase trials (TRIALS full-pipeline trials cost what
   4 x TRIALS phase trials do). Printed: each phase's objective, best found by each.

Run it alone: both use the 2 cores. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import optuna
from promptopt.operations.v1 import operations_pb2

from services.common.config import ClientConfig, datasets_dir
from services.common.launcher import LocalStack
from services.encoder.client import EncoderClient
from services.llm_eval.replay import convert_grid
from services.optimizer.client import OptimizerClient
from services.surrogate.client import SurrogateClient
from services.tuner.client import TunerClient
from services.tuner.hyperspace import BASELINE, BY_NAME, ORDER, PHASES
from services.tuner.inputs import TuningInputs
from services.tuner.settings import TuningSettings
from services.tuner.trials import TrialRunner

TRIALS = int(os.environ.get("TUNER_BENCH_TRIALS", "4"))


def tune(stack: LocalStack, workers: int) -> tuple[float, dict]:
    """(wall seconds, coordinator state) of a quick tuning with `workers` processes."""
    config = {"quick": True, "trials_per_phase": TRIALS, "workers": workers}
    with TunerClient(ClientConfig(stack.address("tuner"))) as client:
        started = time.monotonic()
        run = client.start(client.pb2.StartRunRequest(config_json=json.dumps(config)))
        list(client.watch(run.run_id))
        seconds = time.monotonic() - started
        finished = client.get(run.run_id)
        if finished.state != operations_pb2.RUN_STATE_SUCCEEDED:
            raise RuntimeError(f"tuning {run.run_id} did not succeed: {finished.error}")
    out = Path(stack.services["tuner"].env["PROMPTOPT_TUNER_STORE_PATH"]).parent / run.run_id
    return seconds, json.loads((out / "coordinator_state.json").read_text())


def optuna_default(stack: LocalStack, out: Path) -> tuple[float, dict[str, float]]:
    """All parameters in one TPE study on final accuracy; each phase's best objective seen."""
    settings = TuningSettings.from_json(json.dumps({"quick": True}), "default", state_dir=out)
    best = dict.fromkeys(ORDER, float("-inf"))
    with (
        EncoderClient(ClientConfig(stack.address("encoder"))) as encoder,
        SurrogateClient(ClientConfig(stack.address("surrogate"))) as surrogate,
        OptimizerClient(ClientConfig(stack.address("optimizer"))) as optimizer,
    ):
        inputs = TuningInputs.load(settings, None)  # the shipped grid and corpus
        runner = TrialRunner(settings, inputs, encoder, surrogate, optimizer, "bench-default")

        def objective(trial: optuna.Trial) -> float:
            config = {**BASELINE, **{name: p.suggest(trial) for name, p in BY_NAME.items()}}
            for phase in ORDER:
                value = runner.run(phase, config, trial.number)[PHASES[phase].objective]
                best[phase] = max(best[phase], value)
            return value  # final accuracy, the inference phase's

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
        started = time.monotonic()
        study.optimize(objective, n_trials=TRIALS)
    return time.monotonic() - started, best


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    datasets = datasets_dir()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        convert_grid(datasets / "hbbops_dev", root / "grid.jsonl")
        env = {
            "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets),
            "PROMPTOPT_LLM_EVAL_BACKEND": "replay",
            "PROMPTOPT_LLM_EVAL_TASK_MODEL": str(root / "grid.jsonl"),
            "PROMPTOPT_DATASETS_DIR": str(datasets),
        }
        names = ("encoder", "llm_eval", "surrogate", "optimizer", "tuner")
        with LocalStack(root / "stack", names=names, port_offset=1400, env=env) as stack:
            print(f"BOLT tuning bench: quick trials, {TRIALS} trials per phase, {os.cpu_count()} cores")
            runs = {}
            for workers in (1, 2):
                seconds, state = tune(stack, workers)
                trials = sum(r["trials"]["complete"] for r in state["phase_results"].values())
                runs[workers] = state
                rate = 3600 * trials / seconds
                print(f"  {workers} worker(s): {trials} trials in {seconds:.0f} s = {rate:.0f} trials/hour")
            seconds, default = optuna_default(stack, root / "default")
            print(f"  Optuna default (all 19 parameters, {TRIALS} full-pipeline trials): {seconds:.0f} s")
            print(f"\n  {'phase':10s} {'objective':24s} {'coordinate descent':>19s} {'Optuna default':>15s}")
            for phase in ORDER:
                cd = runs[1]["phase_results"][phase]["best_value"]
                print(f"  {phase:10s} {PHASES[phase].objective:24s} {cd:19.4f} {default[phase]:15.4f}")


if __name__ == "__main__":
    main()
