"""`make bench` (EcoFlow end to end): the CPU defaults through the services, as a user drives them,
then EcoFlow against LIPO's InvBO on the same small budget with the real CPU LLM.

1. The corpus recipe embeds its default sources through the encoder service (MiniLM, 384-D).
2. `promptopt flow train` on the surrogate (smaller than the seed's network: 256 wide, 4 blocks).
3. `promptopt flow validate --decode`: unguided samples, their distance to the manifold and the
   decode round trip through the LLM-guided decoder (decode -> re-encode cosine and L2).
4. `promptopt run ecoflow --debug`: 4 initial instructions from the APE pool, 2 iterations x 2
   guided samples (lambda 1), each decoded, re-encoded and scored on the validation questions;
   results JSON and plot.
5. `promptopt run lipo --mode skip-hbbops` (InvBO in the VAE latent) from the same 4 scored
   instructions (EcoFlow's initial design, loaded), 4 iterations: the same number of proposals.
   Its re-score of the loaded best comes from the answer cache, so its own LLM calls are those of
   its proposals; the shared initial design's calls are added to both columns.

Both score on the first half of GSM8K test (FIDELITY questions each), report their winner on the
other half (TEST_FIDELITY questions), answer with at most 256 tokens, and decode with the same
LLM-guided decoder. With so few questions the accuracies are noisy: the table says what was
measured, not which method is better. Prints figures and writes results/bench/ecoflow_vs_lipo.
{json,png}, beside each step's own results (flow training curves, validation, both runs' results
JSON and plot) under results/bench/ecoflow_run/; asserts nothing. Run it alone: it uses both
cores for about half an hour.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from services.cli.results import best_so_far
from services.common.config import datasets_dir
from services.common.launcher import LocalStack
from services.common.plotting import pyplot
from services.encoder import corpus
from tests.bench.cli_runs import newest, timed

FIDELITY = int(os.environ.get("ECOFLOW_RUN_BENCH_FIDELITY", "10"))
TEST_FIDELITY = int(os.environ.get("ECOFLOW_RUN_BENCH_TEST_FIDELITY", "20"))
OUTPUT = Path(os.environ.get("PROMPTOPT_BENCH_DIR", "results/bench"))
SPLITS = ["--split", "test[:50%]", "--test-split", "test[50%:]", "--max-tokens", "256"]
SPLITS += ["--fidelity", str(FIDELITY), "--test-fidelity", str(TEST_FIDELITY)]
APE_POOL = datasets_dir() / "prompts" / "ape_instructions_1000.json"


def run(stack, results: Path, name: str, args: list[str]) -> tuple[dict, float]:
    directory = results / name
    seconds = timed(
        f"promptopt run {name}",
        ["--optimizer", stack.address("optimizer")] + ["--results-dir", str(directory), "run", *args],
    )
    return newest(directory, "*.json"), seconds


def summary(doc: dict, seconds: float, shared_calls: int, proposals: int) -> dict:
    held_out = doc.get("held_out") or {}
    return {
        "best_validation_accuracy": doc["best_score"],
        "best_prompt": doc["best_prompt"],
        "held_out_accuracy": held_out.get("test_score"),
        "held_out_questions": held_out.get("test_questions"),
        "proposals_scored": proposals,
        "llm_calls_run": doc["usage"]["llm_calls"],
        "llm_calls_with_shared_initial_design": doc["usage"]["llm_calls"] + shared_calls,
        "cache_hits": doc["usage"]["cache_hits"],
        "seconds": round(seconds),
    }


def plot(docs: dict[str, dict], shared_calls: dict[str, int], path: Path) -> None:
    """Best validation accuracy so far against LLM calls (the shared initial design counted once
    for each method)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, doc in docs.items():
        points = best_so_far(doc["candidates"])
        if points:
            calls, best = zip(*points, strict=True)
            ax.step([c + shared_calls[name] for c in calls], best, where="post", label=name, marker="o")
    ax.set_xlabel("LLM calls (task and meta, initial design included)")
    ax.set_ylabel(f"best validation accuracy ({FIDELITY} questions)")
    ax.set_title("EcoFlow vs LIPO InvBO, same proposals, CPU LLM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    env = {"PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(datasets_dir())}
    names = ("encoder", "decoder", "llm_eval", "surrogate", "optimizer")
    with tempfile.TemporaryDirectory() as state, LocalStack(state, names=names, port_offset=1700, env=env) as stack:
        results = OUTPUT / "ecoflow_run"  # every run's results JSON and plot, kept
        data = Path(state) / "corpus.pt"
        started = time.monotonic()
        corpus.main(["--output", str(data), "--encoder", stack.address("encoder")])
        print(f"corpus: {time.monotonic() - started:.0f} s")
        surrogate = ["--surrogate", stack.address("surrogate"), "--results-dir", str(results)]
        train = ["flow", "train", "--data", str(data), "--epochs", "20", "--batch-size", "256", "--normalize"]
        timed("promptopt flow train", [*surrogate, *train, "--hidden-dim", "256", "--num-blocks", "4", "--lr", "0.001"])
        checkpoint = newest(results, "flow-*.json")["flow_run"]
        models = ["--decoder", stack.address("decoder"), "--encoder", stack.address("encoder")]
        validate = ["flow", "validate", "--checkpoint", checkpoint, "--n-samples", "4", "--decode"]
        timed("promptopt flow validate --decode", [*surrogate, *models, *validate])
        checked = newest(results, "flow-validate-*.json")
        decoded = checked["decoded"]
        print(
            f"unguided samples: L2 to the nearest training embedding "
            f"{sum(checked['per_sample_nearest_train_l2']) / len(checked['per_sample_nearest_train_l2']):.3f} "
            f"(held-out reference {checked['heldout_nearest_l2']:.3f}); decode round trip cosine "
            f"{sum(decoded['cosine']) / len(decoded['cosine']):.3f} over {len(decoded['cosine'])} samples"
        )

        ecoflow, ecoflow_s = run(
            stack, results, "ecoflow", ["ecoflow", "--debug", "--flow-checkpoint", checkpoint, *SPLITS]
        )
        initial = [
            {"instruction": o["instruction"], "error_rate": o["error"], "n": FIDELITY} for o in ecoflow["initial"]
        ]
        evals = Path(state) / "initial_design.json"
        evals.write_text(json.dumps(initial))
        initial_calls = len(initial) * FIDELITY  # scored by EcoFlow's run, loaded by LIPO's
        lipo_args = ["lipo", "--debug", "--mode", "skip-hbbops", "--hyperband-evals", str(evals)]
        lipo_args += ["--evaluations-split", "test[:50%]", "--iterations", "4"]
        shutil.copy(APE_POOL, Path(state) / "volumes" / "optimizer-state" / "ape_instructions.json")  # APE's cache
        lipo, lipo_s = run(stack, results, "lipo", [*lipo_args, "--ape-num-instructions", "1000", *SPLITS])

    proposals = sum(len(it["samples"]) for it in ecoflow["iterations"])
    rows = {
        "ecoflow": summary(ecoflow, ecoflow_s, 0, proposals),
        "lipo-invbo": summary(lipo, lipo_s, initial_calls, lipo["inference"]["iterations"]),
    }
    print(
        f"guided samples (lambda 1): decode round trip cosine {ecoflow['decode_round_trip']['mean_cosine']:.3f}, "
        f"L2 {ecoflow['decode_round_trip']['mean_l2']:.3f}"
    )
    print(f"same budget: {len(initial)} initial instructions x {FIDELITY} questions, then the proposals below")
    print(f"{'':44} {'ecoflow':>12} {'lipo-invbo':>12}")
    for key in rows["ecoflow"]:
        if key != "best_prompt":
            print(f"{key:44} {rows['ecoflow'][key]!s:>12} {rows['lipo-invbo'][key]!s:>12}")
    for name, row in rows.items():
        print(f"{name} winner: {row['best_prompt']!r}")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "ecoflow_vs_lipo.json").write_text(
        json.dumps(
            {"fidelity": FIDELITY, "test_fidelity": TEST_FIDELITY, "methods": rows, "validation": checked}, indent=2
        )
    )
    plot(
        {"ecoflow": ecoflow, "lipo-invbo": lipo},
        {"ecoflow": 0, "lipo-invbo": initial_calls},
        OUTPUT / "ecoflow_vs_lipo.png",
    )
    print(f"wrote {OUTPUT / 'ecoflow_vs_lipo.json'} and .png")


if __name__ == "__main__":
    main()
