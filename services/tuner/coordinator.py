"""BOLT coordinate descent (seed 004): phases vae -> scorer -> gp -> inference, each an Optuna
study tuning its parameters with the others fixed at the best so far, run by worker processes.

The coordinator keeps the seed's output tree, written atomically: coordinator_state.json (what
a resume reads), best_config.yaml (LIPO-E fields: `promptopt run lipo-e --config` loads it),
tuning_report.md with a plot of each phase's objective over its trials, trials/heartbeat.json
(live status, every heartbeat), trials/<phase>_<TIER>_<n>/{config.yaml,metrics.json} (the
workers) and phase_results/<phase>.json. Finished trials live in the Optuna storage, so a
killed coordinator resumes where it was without running any of them again.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import optuna
import yaml
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState
from prometheus_client import Gauge

from services.common.errors import FailedPreconditionError
from services.common.operations import Cancelled
from services.common.plotting import tuning_phases_png
from services.tuner import metrics
from services.tuner.config import TunerConfig
from services.tuner.hyperspace import BASELINE, PHASES
from services.tuner.inputs import TuningInputs
from services.tuner.settings import TuningSettings
from services.tuner.study import counts, finished, heartbeat_ages, open_study, storage_for, write_atomic
from services.tuner.worker import spawned

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0
TRIALS = Gauge(
    "promptopt_tuner_trials",
    "Trials of a tuning's phase studies, by run, phase and state (complete, running, waiting, fail; "
    "failures split into error, stale and preempted; retried counts re-enqueued trials).",
    ["run", "phase", "state"],
)
BEST = Gauge("promptopt_tuner_best_objective", "Best objective so far of each phase (maximised).", ["run", "phase"])
WORKERS = Gauge("promptopt_tuner_workers_alive", "Trial worker processes this tuner runs, by phase.", ["run", "phase"])
WORKER_HEARTBEAT_AGE = Gauge(
    "promptopt_tuner_worker_heartbeat_age_seconds",
    "Seconds since each worker running a trial last beat Optuna's heartbeat (any host; stale past grace_seconds).",
    ["run", "phase", "worker"],
)
HEARTBEAT = Gauge(
    "promptopt_tuner_heartbeat_timestamp_seconds",
    "When the coordinator last checked its workers (Unix time; 0: never).",
)
MAX_RESPAWNS = 20  # per phase: workers that exited before the phase ended are restarted this often


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def worker_count(settings: TuningSettings) -> tuple[int, list[int | None]]:
    """(workers, the GPU of each): one per visible GPU unless `workers` says otherwise."""
    try:
        import torch  # noqa: PLC0415 - only to count GPUs; the tuner itself needs no torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    n = settings.workers or max(gpus, 1)
    return n, [i % gpus if gpus else None for i in range(n)]


class Coordinator:
    """Runs the phases of one tuning run; `emit(kind, payload)` streams progress, `cancelled()`
    asks it to stop (workers are stopped, state saved)."""

    def __init__(
        self,
        settings: TuningSettings,
        inputs: TuningInputs,
        config: TunerConfig,
        emit=lambda kind, payload: None,
        cancelled=lambda: False,
    ):
        self.settings, self.inputs, self.config, self.emit, self.cancelled = settings, inputs, config, emit, cancelled
        self.root = Path(settings.output_dir)
        self.heartbeat_path = self.root / "trials" / "heartbeat.json"
        self._last_heartbeat = 0.0
        self._beating: set[str] = set()  # workers with a heartbeat series now
        self._lock = None

    # -- state -----------------------------------------------------------------------------------
    def initial_state(self) -> dict:
        """The saved state when resuming from the output directory, else a fresh one."""
        path = self.root / "coordinator_state.json"
        if path.is_file():
            state = json.loads(path.read_text())
            self.progress(f"resuming the tuning {self.root.name}: completed phases {state['completed_phases']}")
            return state
        return {
            "step": 0,
            "started": now(),
            "settings": json.loads(self.settings.to_json(redacted=True)),
            "completed_phases": [],
            "current_phase": None,
            "best_config": dict(BASELINE),
            "phase_results": {},
        }

    def lock(self) -> None:
        """Hold the output directory for this coordinator (FailedPreconditionError when another
        one, e.g. an auto-resumed run and a `--resume` of it, holds it)."""
        if self._lock is None:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".coordinator.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                handle.close()
                raise FailedPreconditionError(
                    f"the tuning {self.root.name!r} is in use by another running tuning: cancel it first"
                ) from exc
            self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def save(self, state: dict) -> None:
        state["updated"] = now()
        write_atomic(self.root / "coordinator_state.json", json.dumps(state, indent=2))

    def progress(self, message: str) -> None:
        log.info("%s", message)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "coordinator.log", "a") as out:
            out.write(f"{now()} {message}\n")
        self.emit("progress", {"message": message})

    # -- phases ----------------------------------------------------------------------------------
    def run_phase(self, state: dict, phase: str) -> None:
        """Tune `phase` to its budget (spawned workers), then record its best and gate."""
        settings = self.settings
        state["current_phase"] = phase
        self.save(state)
        study = open_study(settings, phase, fixed=state["best_config"], inputs=self.inputs)
        done = counts(study)
        self.progress(
            f"phase {phase}: {settings.trials_per_phase} trials, objective {PHASES[phase].objective}, "
            f"gate {PHASES[phase].gate.describe()}; {done['complete']} already complete"
        )
        self._drive_workers(study, phase)
        self._record(state, phase, optuna.load_study(study_name=study.study_name, storage=study._storage))

    def _drive_workers(self, study: optuna.Study, phase: str) -> None:
        n, gpus = worker_count(self.settings)
        context = multiprocessing.get_context("spawn")  # CUDA needs spawn, not fork
        workers: list = [None] * n
        storage = storage_for(self.settings)  # its engine reads the workers' heartbeats
        starts, reported = 0, {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        try:
            while True:
                if self.cancelled():
                    raise Cancelled()
                fail_stale_trials(study)  # a dead worker's trial goes back to WAITING (retried)
                c = counts(study)
                work_left = not finished(c, self.settings.trials_per_phase)  # the workers' own rule
                if not work_left and not c["running"]:
                    self.publish(storage, study, phase, workers, c)  # the phase's final counts
                    break
                for i, process in enumerate(workers):
                    if process is not None and process.is_alive():
                        continue
                    if process is not None and process.exitcode != 0:
                        self.progress(f"worker {i} exited with {process.exitcode}; restarting it")
                    workers[i] = None
                    if not work_left:
                        continue
                    if starts >= n + MAX_RESPAWNS:
                        raise RuntimeError(f"phase {phase}: workers were started {starts} times; stopping")
                    starts += 1
                    args = (self.settings.storage, study.study_name, str(self.root), self.config, gpus[i], os.getpid())
                    workers[i] = context.Process(target=spawned, args=args, name=f"tuner-worker-{i}")
                    workers[i].start()
                reported = self._report_new(study, phase, reported)
                self.publish(storage, study, phase, workers, c)
                self._heartbeat(phase, workers, c)
                time.sleep(POLL_SECONDS)
        finally:
            for process in workers:
                if process is not None and process.is_alive():
                    process.terminate()  # SIGTERM: the trial is re-enqueued as preempted
            for process in workers:
                if process is not None:
                    process.join(30)
                    if process.is_alive():
                        process.kill()
            WORKERS.labels(self.settings.study_prefix, phase).set(0)
            self._clear_beats(phase)
            storage.remove_session()
            storage.engine.dispose()
        self._report_new(study, phase, reported)
        self._heartbeat(phase, workers, counts(study), force=True)

    def publish(self, storage: RDBStorage, study: optuna.Study, phase: str, workers: list, trial_counts: dict) -> None:
        """The phase's trials, best objective, live workers and trial heartbeats as Prometheus gauges."""
        run = self.settings.study_prefix
        for state, count in trial_counts.items():
            TRIALS.labels(run, phase, state).set(count)
        if trial_counts["complete"]:
            BEST.labels(run, phase).set(study.best_value)
        WORKERS.labels(run, phase).set(sum(1 for p in workers if p is not None and p.is_alive()))
        ages = heartbeat_ages(storage, study)
        self._clear_beats(phase, keep=set(ages))
        for worker, age in ages.items():
            WORKER_HEARTBEAT_AGE.labels(run, phase, worker).set(age)
        self._beating = set(ages)
        HEARTBEAT.set(time.time())

    def _clear_beats(self, phase: str, keep: frozenset | set = frozenset()) -> None:
        """Drop the heartbeat series of workers no longer running a trial of this phase."""
        for worker in self._beating - keep:
            WORKER_HEARTBEAT_AGE.remove(self.settings.study_prefix, phase, worker)
        self._beating &= set(keep)

    def _report_new(self, study: optuna.Study, phase: str, reported: set[int]) -> set[int]:
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in reported:
                reported.add(trial.number)
                value = "-" if trial.value is None else f"{trial.value:.4f}"
                extra = trial.user_attrs.get("error") or ("preempted" if trial.user_attrs.get("preempted") else "")
                self.progress(
                    f"{phase} trial {trial.number} {trial.state.name}: {PHASES[phase].objective} {value} {extra}"
                )
        return reported

    def _heartbeat(self, phase: str, workers: list, trial_counts: dict, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_heartbeat < self.settings.heartbeat_seconds:
            return
        self._last_heartbeat = time.monotonic()
        status = {
            "time": now(),
            "phase": phase,
            "workers": [
                {"index": i, "pid": p.pid if p else None, "alive": bool(p and p.is_alive())}
                for i, p in enumerate(workers)
            ],
            "trials": trial_counts,
        }
        write_atomic(self.heartbeat_path, json.dumps(status, indent=2))

    def _record(self, state: dict, phase: str, study: optuna.Study) -> None:
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(f"phase {phase}: no trial completed ({counts(study)}); see trials/*/metrics.json")
        best = study.best_trial
        values = {k.removeprefix("metric:"): v for k, v in best.user_attrs.items() if k.startswith("metric:")}
        failures = PHASES[phase].gate.failures(values)
        state["best_config"].update(best.params)
        summary = {
            "phase": phase,
            "study": study.study_name,
            "objective": PHASES[phase].objective,
            "best_value": best.value,
            "best_trial": best.number,
            "best_params": best.params,
            "gate": PHASES[phase].gate.describe(),
            "gate_passed": not failures,
            "gate_failures": failures,
            "metrics": [m for m in metrics.assess(values) if m["name"] in values],  # None: not measurable here
            "reported": {k: v for k, v in values.items() if k not in metrics.BY_NAME},  # e.g. heldout_accuracy
            "trials": counts(study),
            "objective_by_trial": [[t.number, t.value] for t in sorted(complete, key=lambda t: t.number)],
        }
        write_atomic(self.root / "phase_results" / f"{phase}.json", json.dumps(summary, indent=2))
        state["phase_results"][phase] = summary
        state["completed_phases"].append(phase)
        state["current_phase"] = None
        self.save(state)
        verdict = "passed" if not failures else f"MISSED ({'; '.join(failures)})"
        self.progress(
            f"phase {phase} done: best {PHASES[phase].objective} {best.value:.4f} (trial {best.number}); gate {verdict}"
        )

    # -- outputs ---------------------------------------------------------------------------------
    def finish(self, state: dict) -> None:
        """best_config.yaml and tuning_report.md with its plot."""
        write_atomic(
            self.root / "best_config.yaml", yaml.safe_dump(lipo_e_config(state["best_config"]), sort_keys=True)
        )
        plot = self.root / "tuning_report.png"
        write_atomic(plot, tuning_phases_png(state["phase_results"]))
        write_atomic(self.root / "tuning_report.md", report_markdown(state, self.settings, plot.name))
        self.save(state)


def lipo_e_config(best: dict) -> dict:
    """The best pipeline as `promptopt run lipo-e --config` reads it: {algorithm fields}."""
    return {"lipo_e": dict(best)}


def report_markdown(state: dict, settings: TuningSettings, plot_name: str) -> str:
    lines = [
        "# BOLT tuning report",
        "",
        f"Study prefix `{settings.study_prefix}`, storage `{settings.storage.split(':')[0]}`, "
        f"{settings.trials_per_phase} trials per phase{' (quick)' if settings.quick else ''}, "
        f"started {state['started']}, updated {state.get('updated', '')}.",
        "",
        "Inference trials run LIPO-E in grid mode on the recorded grid, where the exemplar scorer has "
        "no pool to score: `use_scorer` and the scorer's settings come from the scorer phase alone.",
        "",
        f"![objective per phase]({plot_name})",
        "",
        "| phase | objective | best | trial | gate | passed |",
        "|---|---|---|---|---|---|",
    ]
    for phase, r in state["phase_results"].items():
        lines.append(
            f"| {phase} | {r['objective']} | {r['best_value']:.4f} | {r['best_trial']} | {r['gate']} | "
            f"{'yes' if r['gate_passed'] else 'NO: ' + '; '.join(r['gate_failures'])} |"
        )
    lines += [
        "",
        "## Metrics of each phase's best trial",
        "",
        "| metric | group | value | target | passed |",
        "|---|---|---|---|---|",
    ]
    for r in state["phase_results"].values():
        for m in r["metrics"]:
            value = "not measured" if m["value"] is None else f"{m['value']:.4g}"
            passed = {True: "yes", False: "no", None: "-"}[m["passed"]]
            lines.append(f"| {m['name']} | {m['group']} | {value} | {m['target']} | {passed} |")
    for phase, r in state["phase_results"].items():
        for name, value in r.get("reported", {}).items():  # beside the metrics, never tuned on
            lines.append(f"| {name} | {phase} (reported) | {value} | - | - |")
    lines += [
        "",
        "## Best configuration",
        "",
        "```yaml",
        yaml.safe_dump(lipo_e_config(state["best_config"]), sort_keys=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
