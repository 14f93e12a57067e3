"""`make bench` (Neuro-Latent part, end to end): `promptopt run neuro --debug` against `promptopt
run opro --debug` on the CPU defaults with the real CPU LLM, at the same budget.

On three services on loopback (llm_eval with the CPU LLM, the surrogate with the Neuro-Latent
service, the optimizer), driven through the CLI as a user would: export a training file from the
recorded evaluations (`promptopt neuro export`), train the rewriter (`promptopt neuro train`, one
epoch per phase), then both debug runs: the same starting instruction, 2 steps of 2 proposals,
each scored on the same FIDELITY questions of GSM8K train's first half, the winner reported on
TEST_FIDELITY questions of its second half (answers of at most 256 tokens). GSM8K test stays out:
the exported training file chose its teachers by recorded accuracies on GSM8K test. The neuro
run's proposals are the rewriter's (its generations are not llm_eval calls); OPRO's come from the
meta-LLM, whose calls count as LLM calls, so at the same number of proposals OPRO spends more.
With so few questions the accuracies are noisy: the table says what was measured, not which
method is better. Prints figures and writes results/bench/neuro_vs_opro.{json,png}; asserts
nothing. Run it alone: it uses both cores for about half an hour.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from services.cli.results import best_so_far
from services.common.config import datasets_dir
from services.common.launcher import LocalStack
from services.common.plotting import pyplot
from tests.bench.cli_runs import newest, timed

FIDELITY = int(os.environ.get("NEURO_RUN_BENCH_FIDELITY", "20"))
TEST_FIDELITY = int(os.environ.get("NEURO_RUN_BENCH_TEST_FIDELITY", "20"))
OUTPUT = Path(os.environ.get("PROMPTOPT_BENCH_DIR", "results/bench"))
SPLITS = ["--split", "train[:50%]", "--test-split", "train[50%:]", "--max-tokens", "256"]
SPLITS += ["--fidelity", str(FIDELITY), "--test-fidelity", str(TEST_FIDELITY)]


def summary(doc: dict, seconds: float) -> dict:
    held_out = doc.get("held_out") or {}
    return {
        "best_validation_accuracy": doc["best_score"],
        "best_prompt": doc["best_prompt"],
        "held_out_accuracy": held_out.get("test_score"),
        "proposals_scored": sum(1 for c in doc["candidates"] if c["step"] > 0),
        "llm_calls": doc["usage"]["llm_calls"],
        "cache_hits": doc["usage"]["cache_hits"],
        "seconds": round(seconds),
    }


def plot(docs: dict[str, dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, doc in docs.items():
        points = best_so_far(doc["candidates"])
        if points:
            calls, best = zip(*points, strict=True)
            ax.step(calls, best, where="post", label=name, marker="o")
    ax.set_xlabel("LLM calls (task and meta)")
    ax.set_ylabel(f"best validation accuracy ({FIDELITY} questions)")
    ax.set_title("Neuro-Latent vs OPRO, --debug, CPU LLM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    env = {"PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir())}
    names = ("llm_eval", "surrogate", "optimizer")
    results = OUTPUT / "neuro_run"
    with tempfile.TemporaryDirectory() as state, LocalStack(state, names=names, port_offset=1800, env=env) as stack:
        data = Path(state) / "neuro_training_data.json"
        timed("promptopt neuro export", ["neuro", "export", "--output", str(data)])
        surrogate = ["--surrogate", stack.address("surrogate"), "--results-dir", str(results)]
        train = ["neuro", "train", "--data", str(data), "--phase1-epochs", "1", "--phase2-epochs", "1"]
        timed("promptopt neuro train", [*surrogate, *train])
        docs, seconds = {}, {}
        for name in ("neuro", "opro"):
            directory = results / name
            argv = ["--optimizer", stack.address("optimizer"), "--results-dir", str(directory)]
            seconds[name] = timed(f"promptopt run {name} --debug", [*argv, "run", name, "--debug", *SPLITS])
            docs[name] = newest(directory, "*.json")
    rows = {name: summary(doc, seconds[name]) for name, doc in docs.items()}
    print(f"{'':28} {'neuro':>12} {'opro':>12}")
    for key in rows["neuro"]:
        if key != "best_prompt":
            print(f"{key:28} {rows['neuro'][key]!s:>12} {rows['opro'][key]!s:>12}")
    for name, row in rows.items():
        print(f"{name} winner: {row['best_prompt']!r}")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "neuro_vs_opro.json").write_text(
        json.dumps({"fidelity": FIDELITY, "test_fidelity": TEST_FIDELITY, "methods": rows}, indent=2)
    )
    plot(docs, OUTPUT / "neuro_vs_opro.png")
    print(f"wrote {OUTPUT / 'neuro_vs_opro.json'} and .png")


if __name__ == "__main__":
    main()
