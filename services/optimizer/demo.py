"""`make demo`: start the six services on loopback, run a short OPRO job on the CPU model (selected
on 8 train questions, the winner reported on 20 held-out test questions), stop.

`python -m services.optimizer.demo lipo --debug` (or `make demo ARGS="lipo --debug"`) runs
those `promptopt run` arguments instead. State (answer cache, runs, the APE pool) stays in
`state/demo`, so a second demo reuses cached answers.
"""

from __future__ import annotations

import sys
import time

from services.common.config import datasets_dir
from services.common.launcher import LocalStack
from services.optimizer import cli

DEFAULT_RUN = [
    "opro",
    "--iterations",
    "2",
    "--candidates-per-step",
    "2",
    "--fidelity",
    "8",
    "--test-fidelity",
    "20",
    "--name",
    "demo",
]


def main(argv: list[str] | None = None) -> int:
    run_args = (sys.argv[1:] if argv is None else argv) or DEFAULT_RUN
    datasets = datasets_dir()
    if not (datasets / "gsm8k" / "train.jsonl").is_file():
        print(f"GSM8K not found under {datasets} (PROMPTOPT_DATASETS_DIR)", file=sys.stderr)
        return 2
    env = {"PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets)}
    started = time.monotonic()
    cli.console.print("starting encoder, decoder, llm_eval, surrogate, optimizer, tuner on 127.0.0.1:50051-50056 ...")
    with LocalStack("state/demo", env=env) as stack:
        cli.console.print(f"all six services SERVING after {time.monotonic() - started:.0f}s")
        code = cli.main(["--optimizer", stack.address("optimizer"), "run", *run_args])
    cli.console.print(f"demo finished in {time.monotonic() - started:.0f}s; services stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
