"""`make demo`: start the six services on loopback, run a short OPRO job on the CPU model (selected
on 8 train questions, the winner reported on 20 held-out test questions), stop.

`python -m services.cli.demo lipo --debug` (or `make demo ARGS="lipo --debug"`) runs
those `promptopt run` arguments instead. State (answer cache, runs, the APE pool) stays in
`state/demo`, so a second demo reuses cached answers.

`python -m services.cli.demo tune --quick` (`make tune`) runs `promptopt tune` instead, on
llm_eval's replay backend over the recorded hbbops_dev grid (state in `state/tune`).
"""

from __future__ import annotations

import subprocess
import sys
import time

from services.cli import main as cli
from services.common.config import datasets_dir
from services.common.launcher import LocalStack

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


def tune(args: list[str]) -> int:
    """BOLT tuning through the services: llm_eval replays the recorded grid (no LLM needed)."""
    datasets, state = datasets_dir(), "state/tune"
    table = f"{state}/replay/hbbops_dev.jsonl"
    subprocess.run(
        [sys.executable, "-m", "services.llm_eval.replay", "grid", str(datasets / "hbbops_dev"), table], check=True
    )
    env = {
        "PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets),
        "PROMPTOPT_LLM_EVAL_BACKEND": "replay",
        "PROMPTOPT_LLM_EVAL_TASK_MODEL": table,
        "PROMPTOPT_DATASETS_DIR": str(datasets),
    }
    names = ("encoder", "decoder", "llm_eval", "surrogate", "optimizer", "tuner")
    started = time.monotonic()
    with LocalStack(state, names=names, env=env) as stack:
        cli.console.print(
            f"six services SERVING after {time.monotonic() - started:.0f}s (llm_eval: replay of hbbops_dev)"
        )
        code = cli.main(["--tuner", stack.address("tuner"), "tune", *args])
    cli.console.print(f"tuning finished in {time.monotonic() - started:.0f}s; services stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    run_args = (sys.argv[1:] if argv is None else argv) or DEFAULT_RUN
    if run_args[0] == "tune":
        return tune(run_args[1:])
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
