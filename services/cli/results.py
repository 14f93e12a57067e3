"""Run results for people: the results JSON and a plot of score vs LLM calls, with the winner's
held-out test score beside its validation score."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from services.common.plotting import pyplot


def results_document(run, events) -> dict:
    """The results JSON of a run: its record, resolved config, best prompt and every candidate."""
    candidates = [
        {
            "sequence": e.sequence,
            "step": e.candidate.step,
            "prompt": e.candidate.prompt,
            "score": e.candidate.score,
            "num_evaluated": e.candidate.num_evaluated,
            "comparable": e.candidate.comparable,
            "exemplar_ids": list(e.candidate.exemplar_ids),
            "llm_calls": e.usage.llm_calls,
            "tokens": e.usage.prompt_tokens + e.usage.completion_tokens,
            "cache_hits": e.usage.cache_hits,
        }
        for e in events
        if e.WhichOneof("event") == "candidate"
    ]
    results = [e.result for e in events if e.WhichOneof("event") == "result"]
    report = json.loads(results[-1].report_json) if results and results[-1].report_json else {}
    held_out = results[-1].held_out if results and results[-1].HasField("held_out") else None
    return {
        **report,  # LIPO: the seed's timestamp, vae_*, hyperband, inference and total_llm_calls blocks
        "run_id": run.run_id,
        "algorithm": run.algorithm,
        "state": MessageToDict(run, preserving_proto_field_name=True).get("state"),
        "config": {**json.loads(run.config_json or "{}"), **report.get("config", {})},
        "best_prompt": run.best_prompt,
        "best_score": run.best_score,
        "held_out": (
            MessageToDict(held_out, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            if held_out
            else None
        ),
        "usage": {f.name: getattr(run.usage, f.name) for f in run.usage.DESCRIPTOR.fields},
        "candidates": candidates,
    }


def best_so_far(candidates: list[dict]) -> list[tuple[int, float]]:
    """(LLM calls, best comparable score so far) at each comparable candidate: screening scores
    (fewer questions) never set the best."""
    out, best = [], float("-inf")
    for c in candidates:
        if c["comparable"]:
            best = max(best, c["score"])
            out.append((c["llm_calls"], best))
    return out


def plot_scores(document: dict, path: Path) -> None:
    """PNG: candidate scores against cumulative LLM calls (comparable ones filled, screening
    ones faint), the best comparable score so far, and the winner's held-out test score."""
    plt = pyplot()

    candidates = document["candidates"]
    comparable = [c for c in candidates if c["comparable"]]
    screening = [c for c in candidates if not c["comparable"]]
    inference = (document.get("inference") or {}).get("history") or []
    if inference:
        fig, (ax, ax_inv) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
        plot_inference(ax_inv, inference)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    if screening:
        ax.scatter(
            [c["llm_calls"] for c in screening],
            [c["score"] for c in screening],
            s=10,
            alpha=0.25,
            color="grey",
            label="screening (fewer questions)",
        )
    calls = [c["llm_calls"] for c in comparable]
    n = comparable[0]["num_evaluated"] if comparable else 0
    ax.scatter(calls, [c["score"] for c in comparable], s=18, alpha=0.7, label=f"candidate (n={n})")
    ax.step(calls, [b for _, b in best_so_far(candidates)], where="post", color="C3", label="best so far")
    held_out = document.get("held_out")
    if held_out:
        x = max((c["llm_calls"] for c in candidates), default=0)
        ax.scatter(
            [x],
            [held_out["test_score"]],
            marker="*",
            s=160,
            color="C2",
            zorder=5,
            label=f"winner on held-out {held_out['test_split']} (n={held_out['test_questions']})",
        )
    ax.set_xlabel("LLM calls (cache misses)")
    ax.set_ylabel(f"accuracy (validation: {document['config'].get('evaluation', {}).get('split', '')})")
    ax.set_title(document["run_id"])
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_inference(ax, history: list[dict]) -> None:
    """InvBO iterations: the GP's predicted error (+- 2 std) against the measured one, and the gap."""
    from matplotlib.ticker import MaxNLocator

    history = [h for h in history if h.get("predicted_error") is not None]  # LIPO-E: rejected ones have none
    if not history:
        return
    iterations = [h["iteration"] for h in history]
    predicted = [h["predicted_error"] for h in history]
    spread = [2 * h["predicted_std"] for h in history]
    ax.errorbar(iterations, predicted, yerr=spread, fmt="o", capsize=3, label="GP predicted error (+-2 std)")
    actual = [(h["iteration"], h["actual_error"]) for h in history if h.get("actual_error") is not None]
    if actual:
        ax.plot(*zip(*actual, strict=True), "s", color="C3", label="measured error")
    if history[0]["incumbent_error_before"] is not None:
        ax.axhline(history[0]["incumbent_error_before"], color="grey", ls="--", lw=1, label="incumbent before InvBO")
    gaps = [(h["iteration"], h["gap"]) for h in history if h.get("gap") is not None]  # LIPO-E has no gap
    if gaps:
        ax.plot(*zip(*gaps, strict=True), "x", color="C2", label="inversion gap (1 - cos)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("InvBO iteration")
    ax.set_ylabel("error rate / cosine gap")
    ax.set_title("InvBO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_results(run, events, directory: str | Path) -> tuple[Path, Path]:
    """Write `<dir>/<run_id>.json` and `<dir>/<run_id>.png`; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = results_document(run, events)
    json_path = directory / f"{run.run_id}.json"
    json_path.write_text(json.dumps(document, indent=2))
    png_path = directory / f"{run.run_id}.png"
    plot_scores(document, png_path)
    return json_path, png_path
