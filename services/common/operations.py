"""Long-running operations: runs persisted in SQLite with sequence-numbered events.

`RunStore` is the storage (one file; PostgreSQL via SQLAlchemy is a later option); `RunManager`
executes resumable jobs in threads, checkpointing after every step, and resumes unfinished
runs when the service starts again. Shared by the optimizer and the tuner.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from services.common.database import hold_exclusive, open_database, transaction
from services.common.errors import (
    FailedPreconditionError,
    NotFoundError,
    StorageFullError,
    UnavailableError,
    describe,
)
from services.common.metrics import RUNS_ACTIVE, RUNS_FINISHED
from services.common.types import Usage

log = logging.getLogger(__name__)


class RunState(enum.IntEnum):
    """Matches the RunState enum of the optimizer and tuner protos."""

    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclasses.dataclass
class RunRecord:
    run_id: str
    algorithm: str
    display_name: str
    state: RunState
    step: int
    total_steps: int
    best_prompt: str
    best_score: float
    usage: Usage
    config: dict
    checkpoint: dict | None
    error: str
    create_time: float
    update_time: float
    last_sequence: int
    cancel_requested: bool


@dataclasses.dataclass
class RunEvent:
    run_id: str
    sequence: int
    time: float
    kind: str  # progress | candidate | result | error
    payload: dict
    usage: Usage


_COLUMNS = (
    "run_id, algorithm, display_name, state, step, total_steps, best_prompt, best_score, usage, config,"
    " checkpoint, error, create_time, update_time, last_sequence, cancel_requested"
)


class RunStore:
    """SQLite-backed runs and events; `wait_events` blocks until new events or a timeout."""

    def __init__(self, path: str | Path, exclusive: bool = False):
        """`exclusive`: this process alone may run the store's runs (a service's own store)."""
        if exclusive:
            self._lock_fd = hold_exclusive(path, "run store")
        self._path = path
        self._conn = open_database(
            path,
            "run store",
            "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, algorithm TEXT, display_name TEXT,"
            " state INTEGER, step INTEGER, total_steps INTEGER, best_prompt TEXT, best_score REAL, usage TEXT,"
            " config TEXT, checkpoint TEXT, error TEXT, create_time REAL, update_time REAL,"
            " last_sequence INTEGER, cancel_requested INTEGER);"
            "CREATE TABLE IF NOT EXISTS events (run_id TEXT, sequence INTEGER, time REAL, kind TEXT,"
            " payload TEXT, usage TEXT, PRIMARY KEY (run_id, sequence));",
        )
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)

    def create(self, algorithm: str, display_name: str, config: dict, total_steps: int) -> RunRecord:
        now = time.time()
        run_id = f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        with self._lock, self._writing():
            self._conn.execute(
                f"INSERT INTO runs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    algorithm,
                    display_name,
                    int(RunState.PENDING),
                    0,
                    total_steps,
                    "",
                    0.0,
                    json.dumps(dataclasses.asdict(Usage())),
                    json.dumps(config),
                    None,
                    "",
                    now,
                    now,
                    0,
                    0,
                ),
            )
        return self.get(run_id)

    def _writing(self):
        return transaction(self._conn, "run store", self._path)

    def get(self, run_id: str) -> RunRecord:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"run_id {run_id!r} not found")
        return _record(row)

    def list(self, limit: int, offset: int = 0) -> list[RunRecord]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM runs ORDER BY create_time DESC, run_id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_record(r) for r in rows]

    def unfinished(self) -> list[RunRecord]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE state IN (?, ?) ORDER BY create_time",
                (int(RunState.PENDING), int(RunState.RUNNING)),
            ).fetchall()
        return [_record(r) for r in rows]

    def update(self, run_id: str, **fields) -> None:
        encoded = {
            k: (
                json.dumps(dataclasses.asdict(v))
                if isinstance(v, Usage)
                else json.dumps(v)
                if k in ("checkpoint", "config")
                else int(v)
                if isinstance(v, bool | RunState)
                else v
            )
            for k, v in fields.items()
        }
        encoded["update_time"] = time.time()
        with self._lock:
            with self._writing():
                self._conn.execute(
                    f"UPDATE runs SET {', '.join(f'{k} = ?' for k in encoded)} WHERE run_id = ?",
                    (*encoded.values(), run_id),
                )
            self._changed.notify_all()

    def append_event(self, run_id: str, kind: str, payload: dict, usage: Usage) -> int:
        with self._lock:
            seq = self.get(run_id).last_sequence + 1
            now = time.time()
            with self._writing():
                self._conn.execute(
                    "INSERT INTO events VALUES (?,?,?,?,?,?)",
                    (run_id, seq, now, kind, json.dumps(payload), json.dumps(dataclasses.asdict(usage))),
                )
                self._conn.execute(
                    "UPDATE runs SET last_sequence = ?, update_time = ? WHERE run_id = ?", (seq, now, run_id)
                )
            self._changed.notify_all()
        return seq

    def events(self, run_id: str, after_sequence: int = 0) -> list[RunEvent]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT run_id, sequence, time, kind, payload, usage FROM events"
                " WHERE run_id = ? AND sequence > ? ORDER BY sequence",
                (run_id, after_sequence),
            ).fetchall()
        return [RunEvent(r[0], r[1], r[2], r[3], json.loads(r[4]), Usage(**json.loads(r[5]))) for r in rows]

    def wait(self, timeout: float) -> None:
        """Block until any run or event changes, or `timeout` seconds pass."""
        with self._changed:
            self._changed.wait(timeout)


def _record(row) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        algorithm=row[1],
        display_name=row[2],
        state=RunState(row[3]),
        step=row[4],
        total_steps=row[5],
        best_prompt=row[6],
        best_score=row[7],
        usage=Usage(**json.loads(row[8])),
        config=json.loads(row[9]),
        checkpoint=json.loads(row[10]) if row[10] else None,
        error=row[11],
        create_time=row[12],
        update_time=row[13],
        last_sequence=row[14],
        cancel_requested=bool(row[15]),
    )


class Cancelled(Exception):
    """Raised inside a job once its run is cancelled; the step in progress is abandoned."""


class Job(ABC):
    """A resumable unit of work the manager drives step by step.

    `state` is JSON-serialisable with an integer `step`; `step(state)` returns the next
    state. Raising `Cancelled` stops the run; any other exception fails it.
    """

    @abstractmethod
    def total_steps(self) -> int: ...

    @abstractmethod
    def initial_state(self) -> dict: ...

    @abstractmethod
    def step(self, state: dict) -> dict: ...

    @abstractmethod
    def best(self, state: dict) -> tuple[str, float]: ...

    def report(self, state: dict) -> dict:
        """Algorithm-specific results sent with the final result event (JSON-serialisable)."""
        return {}

    def result(self, state: dict) -> dict:
        """Typed fields of the final result event beyond the best prompt and score (e.g. held_out)."""
        return {}

    def release(self) -> None:
        """Free what the job holds outside its state (e.g. models in another service) once the
        run has ended: succeeded, failed or cancelled. Not called when the process dies; a
        resumed run rebuilds what it needs."""
        return None


JobFactory = Callable[[RunRecord, Callable[[str, dict], None], Usage, Callable[[], bool]], Job]


class RunManager:
    """Runs jobs in background threads with a checkpoint after every completed step.

    `on_best(record, score)`, if given, is called with the job's best score after every step.
    """

    def __init__(self, store: RunStore, factory: JobFactory, on_best: Callable[[RunRecord, float], None] | None = None):
        self.store = store
        self.factory = factory
        self.on_best = on_best
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def start(self, run_id: str) -> None:
        with self._lock:
            if run_id in self._threads and self._threads[run_id].is_alive():
                return
            thread = threading.Thread(target=self._execute, args=(run_id,), name=f"run-{run_id}", daemon=True)
            self._threads[run_id] = thread
            thread.start()

    def resume_unfinished(self) -> list[str]:
        """Restart every run left PENDING or RUNNING by a previous process."""
        ids = [r.run_id for r in self.store.unfinished()]
        for run_id in ids:
            log.info("resuming run %s", run_id)
            self.start(run_id)
        return ids

    def cancel(self, run_id: str) -> RunRecord:
        """Ask the run to stop after its current step; the record. Cancelling a cancelled run
        changes nothing (a retried CancelRun succeeds); a run that ended otherwise refuses."""
        record = self.store.get(run_id)
        if record.state == RunState.CANCELLED:
            return record
        if record.state.terminal:
            raise FailedPreconditionError(f"run {run_id} already ended ({record.state.name})")
        self.store.update(run_id, cancel_requested=True)
        return self.store.get(run_id)

    def resume(self, run_id: str, release_wait: float = 60.0) -> RunRecord:
        """Restart a FAILED or CANCELLED run from its last checkpoint; the record as resumed.

        Waits up to `release_wait` seconds for the run's previous thread to finish releasing
        what it held (UnavailableError after that: try again)."""
        previous = self._threads.get(run_id)
        if previous is not None:
            previous.join(release_wait)
            if previous.is_alive():
                raise UnavailableError(f"run {run_id} is still releasing its resources; resume it again shortly")
        with self._lock:  # check and flip atomically: one of two concurrent resumes wins
            record = self.store.get(run_id)
            if record.state not in (RunState.FAILED, RunState.CANCELLED):
                raise FailedPreconditionError(
                    f"run {run_id} is {record.state.name}; only FAILED or CANCELLED runs resume"
                )
            self.store.update(run_id, state=RunState.PENDING, cancel_requested=False, error="")
            self.store.append_event(
                run_id, "progress", {"message": f"resume requested after {record.state.name}"}, record.usage
            )
            resumed = self.store.get(run_id)
        self.start(run_id)
        return resumed

    def join(self, run_id: str, timeout: float | None = None) -> None:
        thread = self._threads.get(run_id)
        if thread:
            thread.join(timeout)

    def _execute(self, run_id: str) -> None:
        RUNS_ACTIVE.inc()
        try:
            final = self._run(run_id)
            if final.terminal:
                RUNS_FINISHED.labels(self.store.get(run_id).algorithm, final.name).inc()
        finally:
            RUNS_ACTIVE.dec()

    def _run(self, run_id: str) -> RunState:
        """Execute until a final state; returns it."""
        record = self.store.get(run_id)
        usage = dataclasses.replace(record.usage)

        def emit(kind: str, payload: dict) -> None:
            self.store.append_event(run_id, kind, payload, usage)

        def cancelled() -> bool:
            return self.store.get(run_id).cancel_requested

        job = None
        try:
            job = self.factory(record, emit, usage, cancelled)
            state = record.checkpoint or job.initial_state()
            total = job.total_steps()
            self.store.update(run_id, state=RunState.RUNNING, total_steps=total)
            if record.checkpoint:
                emit("progress", {"message": f"resumed at step {state['step']}/{total}"})
            while state["step"] < total:
                if cancelled():
                    raise Cancelled()
                state = job.step(state)
                prompt, score = job.best(state)
                self.store.update(
                    run_id, step=state["step"], checkpoint=state, usage=usage, best_prompt=prompt, best_score=score
                )
                if self.on_best is not None:
                    self.on_best(record, score)
                emit(
                    "progress",
                    {
                        "step": state["step"],
                        "total_steps": total,
                        "best_score": score,
                        "message": f"step {state['step']}/{total} done",
                    },
                )
            prompt, score = job.best(state)
            emit(
                "result",
                {
                    "best_prompt": prompt,
                    "best_score": score,
                    "report_json": json.dumps(job.report(state)),
                    **job.result(state),
                },
            )
            self.store.update(run_id, state=RunState.SUCCEEDED)
            return RunState.SUCCEEDED
        except Cancelled:
            emit("error", {"message": "cancelled"})
            self.store.update(run_id, state=RunState.CANCELLED, usage=usage)
            return RunState.CANCELLED
        except StorageFullError:  # nothing more can be recorded; the run resumes from its checkpoint
            log.error(
                "run %s stopped: its store is full; it stays RUNNING and resumes when the service restarts", run_id
            )
            return RunState.RUNNING
        except Exception as exc:  # noqa: BLE001 - recorded on the run
            log.exception("run %s failed", run_id)
            emit("error", {"message": describe(exc)})
            self.store.update(run_id, state=RunState.FAILED, error=describe(exc), usage=usage)
            return RunState.FAILED
        finally:
            if job is not None:
                try:
                    job.release()
                except Exception:  # noqa: BLE001 - the run's outcome stands; the resources age out
                    log.warning("run %s: releasing its resources failed", run_id, exc_info=True)
