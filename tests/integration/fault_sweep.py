"""Fault injection over the whole stack: one `lipo --debug` run with the real CPU LLM, during which
each of the six services is SIGKILLed in turn (and llm_eval is SIGSTOPped past the optimizer's
deadline, a hang), each at a moment when the run is about to need it. Every killed service is
restarted; the run must finish without anyone resuming it by hand, with no evaluated answer lost
from llm_eval's cache and none paid twice.

`python -m tests.integration.fault_sweep` (in `make test-reliability`) prints the table of
figures; `tests/integration/test_fault_sweep.py` asserts the same sweep in `make test`. With
PROMPTOPT_STACK=compose it runs against real containers (a hang is `docker compose pause`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from promptopt.operations.v1 import operations_pb2

from services.cli import main as cli
from services.common.config import datasets_dir
from services.common.launcher import LocalStack, Stack
from services.optimizer.client import OptimizerClient
from tests.integration.harness import metric, scrape

# The optimizer's deadline per attempt in the sweep, and the hang: twice as long, so a chunk that
# starts during the first half of it still misses its deadline.
RPC_TIMEOUT_SECONDS = 45
HANG_SECONDS = 90.0
SWEEP_SECONDS = 1500  # the whole run, faults included, or the sweep fails

SWEEP_ENV = {
    "PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS": "48",
    "PROMPTOPT_LLM_EVAL_N_CTX": "2048",
    "PROMPTOPT_OPTIMIZER_EVAL_CHUNK_QUESTIONS": "2",  # several chunks per evaluation: a chunk to hang in
    "PROMPTOPT_OPTIMIZER_RPC_TIMEOUT_SECONDS": str(RPC_TIMEOUT_SECONDS),
}

RUN_ARGS = [
    "run", "lipo", "--debug", "--fidelity", "8", "--bmin", "2", "--ape-instructions", "4",
    "--ape-batch-size", "4", "--ape-max-tokens", "30", "--decoder-steps", "1",
    "--max-inversion-iters", "1", "--iterations", "2", "--test-fidelity", "2", "--seed", "31",
]  # fmt: skip


def _message(event) -> str:
    return event.progress.message if event.WhichOneof("event") == "progress" else ""


def _says(prefix: str | tuple[str, ...]) -> Callable[[object], bool]:
    return lambda event: _message(event).startswith(prefix)


def _candidate(event) -> bool:
    return event.WhichOneof("event") == "candidate"


def _chunk(event) -> bool:
    return event.WhichOneof("event") == "progress" and event.progress.questions_total > 0


@dataclasses.dataclass(frozen=True)
class Fault:
    """`signal` (SIGKILL or SIGSTOP) to `service` at the first event after the previous fault that
    `when` accepts (`moment` says which, and what the run needs next). A killed service stays
    down until some service has felt it (logged a retry of a call to it; at most FELT_WINDOW_S),
    unless `await_felt` is False (the tuner, off the run's path; the optimizer, whose only
    client is this sweep's watch)."""

    service: str
    signal: str
    moment: str
    when: Callable[[object], bool]
    await_felt: bool = True


FELT_WINDOW_S = 30.0

FAULTS = (
    Fault("tuner", "SIGKILL", "the run starts; the tuner is not on its path", lambda e: True, await_felt=False),
    Fault("llm_eval", "SIGKILL", "a Hyperband evaluation is mid-way", _chunk),
    Fault("llm_eval", "SIGSTOP", f"the next chunk; hung {HANG_SECONDS:.0f} s", _chunk),
    Fault("optimizer", "SIGKILL", "a Hyperband candidate is scored", _candidate, await_felt=False),
    Fault("surrogate", "SIGKILL", "Hyperband restarts with a VAE the optimizer holds", _says("Hyperband:")),
    Fault("encoder", "SIGKILL", "InvBO's GP is fitted; decoding re-encodes texts", _says("GP fitted")),
    Fault("decoder", "SIGKILL", "InvBO iteration 1 ends; iteration 2 decodes", _says("InvBO iteration 1:")),
)  # fmt: skip


@dataclasses.dataclass
class Row:
    fault: Fault
    at_event: int = 0
    cached_answers: int = 0  # answers in llm_eval's cache when the fault struck
    outage_s: float = float("nan")  # until the service answered health SERVING again
    felt: str = ""  # retries clients logged and run events about it, until the next fault


def cache_keys(stack: Stack) -> set[str]:
    with sqlite3.connect(stack.services["llm_eval"].env["PROMPTOPT_LLM_EVAL_CACHE_PATH"]) as db:
        return {key for (key,) in db.execute("SELECT key FROM answers")}


def task_calls(stack: Stack) -> float:
    """Task-model LLM calls counted by llm_eval's current process."""
    text = scrape(stack.services["llm_eval"].metrics_port)
    return metric(text, "promptopt_llm_eval_llm_calls_total", 'role="task"')


def retries(stack: Stack) -> Counter:
    """Retries every service's clients have logged: (caller, callee, method, code) -> count."""
    pattern = re.compile(r"/promptopt\.(\w+)\.v1\.\w+/(\w+): (\w+) \(.*\); retrying")
    return Counter((name, *found) for name in stack.services for found in pattern.findall(stack.logs(name)))


@dataclasses.dataclass
class SweepResult:
    rows: list[Row]
    run: object  # optimizer_pb2.Run
    lost_answers: int  # answers cached at some fault and missing at the end
    paid_twice: float  # task calls of the last llm_eval process beyond the answers it added
    new_answers: int  # answers the last llm_eval process added


def strike(stack: Stack, row: Row, on_killed: Callable[[], None]) -> None:
    """Apply the row's fault and bring the service back; `on_killed` runs while a killed
    service is down."""
    fault, started = row.fault, time.monotonic()
    if fault.signal == "SIGSTOP":
        stack.pause(fault.service)
        try:
            time.sleep(HANG_SECONDS)
        finally:
            stack.unpause(fault.service)
    else:
        seen = retries(stack)
        stack.kill(fault.service)
        on_killed()
        while fault.await_felt and time.monotonic() - started < FELT_WINDOW_S:
            if any(callee == fault.service for _, callee, *_ in retries(stack) - seen):
                break
            time.sleep(0.5)
        stack.start(fault.service)
    stack.wait_serving(fault.service)
    row.outage_s = time.monotonic() - started


def _felt(before: Counter, after: Counter, events: list[str]) -> str:
    new = sorted((after - before).items())
    return "; ".join([*(f"{caller} retried {method} {code} x{n}" for (caller, _, method, code), n in new), *events])


def sweep(stack: Stack, faults=FAULTS) -> SweepResult:
    """One run with `faults` struck in order; the figures and checks of the module docstring."""
    request = cli.start_request(cli.build_parser().parse_args(RUN_ARGS))
    rows, pending, events = [], list(faults), []
    kept: set[str] = set()
    restarted_with = 0  # answers cached while llm_eval was last down
    seen = retries(stack)
    struck_until = 0.0  # events stamped before the last fault ended are stale triggers
    with OptimizerClient(stack.address("optimizer")) as client:
        run_id, started = client.start(request).run_id, time.monotonic()
        for event in client.watch(run_id, timeout=SWEEP_SECONDS):
            if time.monotonic() - started > SWEEP_SECONDS:
                client.cancel(run_id)
                raise TimeoutError(f"the sweep's run did not finish in {SWEEP_SECONDS} s")
            if _says(("resumed", "surrogate lost"))(event):
                events.append(_message(event).split(" (")[0])
            if pending and event.time.ToMicroseconds() / 1e6 > struck_until and pending[0].when(event):
                if rows:
                    now = retries(stack)
                    rows[-1].felt, seen, events = _felt(seen, now, events), now, []
                row = Row(pending.pop(0), at_event=event.sequence)
                keys = cache_keys(stack)
                kept |= keys
                row.cached_answers = len(keys)

                def while_down(service=row.fault.service):
                    nonlocal restarted_with
                    if service == "llm_eval":  # its cache cannot change while it is down
                        restarted_with = len(cache_keys(stack))

                strike(stack, row, while_down)
                struck_until = time.time()
                rows.append(row)
        run = client.get(run_id)
    if rows:
        rows[-1].felt = _felt(seen, retries(stack), events)
    rows += [Row(f, felt="not reached: the run ended first") for f in pending]
    final = cache_keys(stack)
    new_answers = len(final) - restarted_with
    return SweepResult(rows, run, len(kept - final), task_calls(stack) - new_answers, new_answers)


def table(result: SweepResult) -> str:
    lines = [f"{'service':<11}{'signal':<9}{'event':>6}{'cached':>8}{'back in s':>11}  moment -> what the run felt"]
    for row in result.rows:
        lines.append(
            f"{row.fault.service:<11}{row.fault.signal:<9}{row.at_event:>6}{row.cached_answers:>8}"
            f"{row.outage_s:>11.1f}  {row.fault.moment} -> {row.felt or 'nothing'}"
        )
    run = result.run
    lines.append(
        f"run {operations_pb2.RunState.Name(run.state)} at step {run.step}/{run.total_steps}; LLM calls "
        f"{run.usage.llm_calls}, cache hits {run.usage.cache_hits}; answers lost {result.lost_answers}; "
        f"paid twice {result.paid_twice:.0f} (the restarted llm_eval added {result.new_answers} answers)"
    )
    return "\n".join(lines)


def failures(result: SweepResult) -> list[str]:
    problems = [f"{r.fault.service} {r.fault.signal}: {r.felt}" for r in result.rows if not r.at_event]
    if result.run.state != operations_pb2.RUN_STATE_SUCCEEDED:
        problems.append(f"run ended {operations_pb2.RunState.Name(result.run.state)}: {result.run.error}")
    if result.lost_answers:
        problems.append(f"{result.lost_answers} cached answers lost")
    if result.paid_twice:
        problems.append(f"{result.paid_twice:.0f} answers paid twice")
    return problems


def open_stack(state_dir: Path) -> Stack:
    env = {**SWEEP_ENV, "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir())}
    if os.environ.get("PROMPTOPT_STACK") == "compose":
        from tests.integration.compose_stack import ComposeStack

        return ComposeStack(state_dir, env, datasets_dir=datasets_dir())
    return LocalStack(state_dir, port_offset=2000, env=env)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fault-sweep-") as tmp, open_stack(Path(tmp)) as stack:
        started = time.monotonic()
        result = sweep(stack)
        print(table(result))
        print(f"sweep: {time.monotonic() - started:.0f} s")
    problems = failures(result)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
