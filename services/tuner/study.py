"""The Optuna side of a phase: its study in the shared storage (SQLite or any SQLAlchemy URL),
the tier-by-tier samplers (a PartialFixedSampler holds the tiers not being tuned), and the worker
loop that runs trials with heartbeats, retries stale or preempted ones through Optuna's
RetryFailedTrialCallback, and survives a `tell` on a trial that was already failed."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
import warnings
import zlib
from pathlib import Path

import optuna
import sqlalchemy as sa
import yaml
from optuna.samplers import PartialFixedSampler, TPESampler
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import TrialState
from sqlalchemy import event

from services.common.errors import FailedPreconditionError
from services.tuner.hyperspace import PHASES, TIER_NAMES, narrowed_space
from services.tuner.inputs import TuningInputs
from services.tuner.settings import TuningSettings, redact

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

OOM_RETRIES = 3  # in-process retries of a trial that ran out of memory, with exponential backoff
OOM_BACKOFF_SECONDS = 2.0


class Preempted(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT) mid-trial; the trial is retried elsewhere."""


def storage_for(settings: TuningSettings) -> RDBStorage:
    """The shared study storage with heartbeats; ValueError when it cannot be reached."""
    try:
        if settings.storage.startswith("sqlite:///"):
            Path(settings.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        storage = RDBStorage(
            settings.storage,
            engine_kwargs={"connect_args": {"timeout": 60}} if settings.storage.startswith("sqlite") else None,
            heartbeat_interval=settings.heartbeat_seconds,
            grace_period=settings.grace_seconds,
            heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=settings.max_retry),
        )
        if settings.storage.startswith("sqlite"):
            serialize_sqlite(storage.engine)
        return storage
    except Exception as exc:  # SQLAlchemy raises many kinds: each means the same to the user
        where = redact(settings.storage) if not settings.storage.startswith("sqlite") else "the run's SQLite file"
        raise ConnectionError(f"storage {where} cannot be reached: {type(exc).__name__}") from exc


def serialize_sqlite(engine) -> None:
    """SQLite ignores SELECT ... FOR UPDATE: make every transaction BEGIN IMMEDIATE (SQLAlchemy's
    pysqlite recipe), so two workers popping the same waiting trial are serialised."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def study_name(settings: TuningSettings, phase: str) -> str:
    return f"{settings.study_prefix}-{phase}"


def open_study(
    settings: TuningSettings, phase: str, fixed: dict | None = None, inputs: TuningInputs | None = None
) -> optuna.Study:
    """The phase's study, made with what its workers need: the fixed config, the best-so-far
    values enqueued as its first trial, the grid and corpus (`inputs`), then the settings (written
    last: workers wait for them). A study of another tuning under the same name is refused."""
    study = optuna.create_study(
        storage=storage_for(settings), study_name=study_name(settings, phase), direction="maximize", load_if_exists=True
    )
    owner = study.user_attrs.get("settings", {}).get("output_dir")
    if owner is not None and owner != settings.output_dir:
        raise FailedPreconditionError(
            f"study {study.study_name!r} belongs to the tuning {Path(owner).name!r}: choose another study_prefix"
        )
    if inputs is not None and "inputs" not in study.user_attrs:  # also a study made before inputs travelled
        study.set_user_attr("inputs", inputs.for_phase(phase, settings.budget.corpus_size))
    if fixed is not None and owner is None:
        if "fixed" not in study.user_attrs:  # a start that died part-way repeats only what is missing
            if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
                space = narrowed_space(settings.space)
                start = {p: fixed[p] for p in PHASES[phase].params if space[p].contains(fixed[p])}
                study.enqueue_trial(start, user_attrs={"baseline": True})
            study.set_user_attr("phase", phase)
            study.set_user_attr("fixed", fixed)
        study.set_user_attr("settings", json.loads(settings.to_json(redacted=True)))
    return study


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, with failures split: errors (recorded by the objective), preempted (a stop
    signal) and stale (neither: the worker died, its heartbeat ran out); retried counts retries."""
    trials = study.get_trials(deepcopy=False)
    out = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    out["error"] = sum(bool(t.user_attrs.get("error")) for t in failed)
    out["preempted"] = sum(bool(t.user_attrs.get("preempted")) for t in failed)
    out["stale"] = len(failed) - out["error"] - out["preempted"]
    out["retried"] = sum(RetryFailedTrialCallback.retried_trial_number(t) is not None for t in trials)
    return out


HEARTBEATS = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
TRIALS = sa.table("trials", sa.column("trial_id"), sa.column("number"), sa.column("study_id"), sa.column("state"))
STUDIES = sa.table("studies", sa.column("study_id"), sa.column("study_name"))


def heartbeat_ages(storage: RDBStorage, study: optuna.Study) -> dict[str, float]:
    """Seconds since each running trial's worker last beat, by worker id (Optuna's heartbeat
    table, read on the database's clock as Optuna's stale check does); workers of every host."""
    running = {t.number: t.user_attrs.get("worker", "?") for t in study.get_trials(False, (TrialState.RUNNING,))}
    if not running:
        return {}
    query = (
        sa.select(TRIALS.c.number, HEARTBEATS.c.heartbeat)
        .join(HEARTBEATS, HEARTBEATS.c.trial_id == TRIALS.c.trial_id)
        .join(STUDIES, STUDIES.c.study_id == TRIALS.c.study_id)
        .where(STUDIES.c.study_name == study.study_name, TRIALS.c.state == "RUNNING")
    )
    with storage.engine.connect() as connection:
        clock = connection.execute(sa.select(sa.func.now())).scalar().replace(tzinfo=None)
        beats = connection.execute(query).all()
    ages: dict[str, float] = {}
    for number, beat in beats:
        if number in running:
            worker = running[number]
            ages[worker] = min(ages.get(worker, math.inf), (clock - beat.replace(tzinfo=None)).total_seconds())
    return ages


def finished(trial_counts: dict[str, int], budget: int) -> bool:
    """Workers stop once completed trials plus trials that failed with an error reach the budget
    and no retry waits (stale and preempted trials are retried, so they do not count)."""
    return trial_counts["complete"] + trial_counts["error"] >= budget and not trial_counts["waiting"]


def stage_sampler(study: optuna.Study, settings: TuningSettings, phase: str, seed: int):
    """(sampler, tier). Tiers in priority order: the phase's budget is split across its tiers;
    while tier t is tuned, earlier tiers are fixed at the phase's best trial so far and later
    tiers at the fixed config (PartialFixedSampler over TPE)."""
    tiers = PHASES[phase].tiers()
    done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    share = max(1, settings.trials_per_phase // len(tiers))
    tier = tiers[min(done // share, len(tiers) - 1)]
    fixed_config = study.user_attrs["fixed"]
    try:
        best = study.best_trial.params
    except ValueError:
        best = {}
    space = narrowed_space(settings.space)
    held = {}
    for name in PHASES[phase].params:
        param = space[name]
        if param.tier < tier and name in best:
            held[name] = best[name]
        elif param.tier > tier and param.contains(fixed_config[name]):
            held[name] = fixed_config[name]
    base = TPESampler(seed=seed, n_startup_trials=max(2, share // 2), constant_liar=True)
    return (PartialFixedSampler(held, base) if held else base), tier


@dataclasses.dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None


class Worker:
    """Runs trials of one phase's study until its budget is spent. `run_trial(phase, config,
    seed)` returns the trial's metrics (the phase objective among them)."""

    def __init__(self, study: optuna.Study, run_trial, output_dir: str | Path, worker_id: str = ""):
        self.study, self.run_trial = study, run_trial
        self.settings = TuningSettings.from_dict(study.user_attrs["settings"])
        self.phase, self.fixed = study.user_attrs["phase"], study.user_attrs["fixed"]
        self.space = narrowed_space(self.settings.space)
        self.output = Path(output_dir) / "trials"
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}"
        self.stopping = False
        self.tier = 1
        self._in_trial = False
        self._ran: list[int] = []  # trial numbers this worker ran, in order

    def objective(self, trial: optuna.Trial) -> float:
        """Run the trial; any failure is recorded on it as `error` (not retried) or `preempted`."""
        self._ran.append(trial.number)
        for name, value in (("worker", self.worker_id), ("tier", self.tier), ("preempted", False), ("error", None)):
            trial.set_user_attr(name, value)  # a retry inherits its parent's attributes: reset them
        try:
            return self._objective(trial)
        except Preempted:
            trial.set_user_attr("preempted", True)
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            raise

    def _objective(self, trial: optuna.Trial) -> float:
        params = {name: self.space[name].suggest(trial) for name in PHASES[self.phase].params}
        config = {**self.fixed, **params}
        directory = self.output / f"{self.phase}_{TIER_NAMES[self.tier]}_{trial.number}"
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / "config.yaml", yaml.safe_dump(config, sort_keys=True))
        with open(self.output / "runs.log", "a") as runs:  # one line per trial start: audit of who ran what
            runs.write(json.dumps({"trial": trial.number, "worker": self.worker_id, "time": time.time()}) + "\n")
        values = self._with_oom_retries(trial, config)
        objective = values.get(PHASES[self.phase].objective)
        for name, value in values.items():
            trial.set_user_attr(f"metric:{name}", value)
        write_atomic(
            directory / "metrics.json",
            json.dumps({"trial": trial.number, "phase": self.phase, "params": params, "metrics": values}, indent=2),
        )
        if objective is None or not math.isfinite(objective):
            raise ValueError(f"the trial produced no finite {PHASES[self.phase].objective} ({objective})")
        return float(objective)

    def _with_oom_retries(self, trial, config: dict) -> dict:
        """run_trial, retried in place after an out-of-memory error (2, 4, 8 s backoff)."""
        self._in_trial = True
        try:
            for attempt in range(OOM_RETRIES + 1):
                if self.stopping:
                    raise Preempted("stop requested")
                try:
                    return self.run_trial(self.phase, config, self.settings.seed * 100_003 + self._original(trial))
                except Preempted:
                    raise
                except Exception as exc:  # out of memory in a service or here: back off, then retry
                    if not is_oom(exc) or attempt == OOM_RETRIES:
                        raise
                    delay = OOM_BACKOFF_SECONDS * 2**attempt
                    log.warning("trial %d out of memory (%s); retrying in %.0f s", trial.number, exc, delay)
                    time.sleep(delay)
            raise AssertionError("unreachable")
        finally:
            self._in_trial = False

    def _original(self, trial: optuna.Trial) -> int:
        """The number of the trial a retry repeats (its own if it is none): a retry reruns its
        trial's seed."""
        frozen = self.study.get_trials(deepcopy=False)[trial.number]
        number = RetryFailedTrialCallback.retried_trial_number(frozen)
        return trial.number if number is None else number

    def run(self, max_trials: int | None = None) -> list[TrialOutcome]:
        """Trials until the phase's budget is spent, `max_trials` ran, or a stop was asked; the
        outcomes of the trials it ran."""
        budget, start = self.settings.trials_per_phase, len(self._ran)
        while (
            not self.stopping
            and not finished(counts(self.study), budget)
            and (max_trials is None or len(self._ran) - start < max_trials)
        ):
            seed = zlib.crc32(f"{self.settings.seed}:{self.worker_id}:{len(self._ran)}".encode())
            self.study.sampler, self.tier = stage_sampler(self.study, self.settings, self.phase, seed)
            try:
                self.study.optimize(self.objective, n_trials=1, gc_after_trial=True)
            except Preempted:
                self._retry_preempted()
                break
            except Exception as exc:  # a failed trial (error recorded), or a tell on one already failed
                log.warning("%s: trial failed or its result was refused (failed as stale): %s", self.worker_id, exc)
        trials = self.study.get_trials(deepcopy=False)
        return [TrialOutcome(n, trials[n].state.name, trials[n].value) for n in self._ran[start:]]

    def _retry_preempted(self) -> None:
        """Re-enqueue the trial a stop interrupted (as a stale trial is), within max_retry."""
        trial = self.study.get_trials(deepcopy=False)[self._ran[-1]]
        if trial.state == TrialState.FAIL and trial.user_attrs.get("preempted"):
            RetryFailedTrialCallback(max_retry=self.settings.max_retry)(self.study, trial)

    def stop_on_signals(self) -> None:
        """SIGTERM/SIGINT: the running trial is interrupted (FAILED as preempted and re-enqueued)
        and the worker exits."""

        def handler(signum, frame):
            self.stopping = True
            if self._in_trial:  # elsewhere the loop stops before the next trial
                raise Preempted(f"signal {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return (
        isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in text or "resource_exhausted" in text
    )


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` through a synced temporary file and a rename (readers never see
    half, and a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(text.encode() if isinstance(text, str) else text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
