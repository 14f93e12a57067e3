"""Run results for people: the results JSON and a plot of score vs LLM calls."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf.json_format import MessageToDict


def results_document(run, events) -> dict:
    """The results JSON of a run: its record, resolved config, best prompt and every candidate."""
    candidates = [
        {
            "sequence": e.sequence,
            "step": e.candidate.step,
            "prompt": e.candidate.prompt,
            "score": e.candidate.score,
            "num_evaluated": e.candidate.num_evaluated,
            "llm_calls": e.usage.llm_calls,
            "tokens": e.usage.prompt_tokens + e.usage.completion_tokens,
            "cache_hits": e.usage.cache_hits,
        }
        for e in events
        if e.WhichOneof("event") == "candidate"
    ]
    return {
        "run_id": run.run_id,
        "algorithm": run.algorithm,
        "state": MessageToDict(run, preserving_proto_field_name=True).get("state"),
        "config": json.loads(run.config_json or "{}"),
        "best_prompt": run.best_prompt,
        "best_score": run.best_score,
        "usage": {f.name: getattr(run.usage, f.name) for f in run.usage.DESCRIPTOR.fields},
        "candidates": candidates,
    }


def plot_scores(document: dict, path: Path) -> None:
    """PNG: each candidate's score and the best so far against cumulative LLM calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [c["llm_calls"] for c in document["candidates"]]
    scores = [c["score"] for c in document["candidates"]]
    best, running = [], float("-inf")
    for score in scores:
        running = max(running, score)
        best.append(running)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(calls, scores, s=18, alpha=0.6, label="candidate")
    ax.step(calls, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("LLM calls (cache misses)")
    ax.set_ylabel(f"accuracy on {document['config'].get('evaluation', {}).get('split', '')} questions")
    ax.set_title(document["run_id"])
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
