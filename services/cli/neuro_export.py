"""Training data for the Neuro-Latent rewriter (seed 002's JSON: distillation_pairs and triplets)
made from the platform's own records.

- Stored runs (OPRO/ProTeGi results JSON): at each step the incumbent (the best comparable prompt
  before it) is the parent of that step's proposals. A proposal that beat it is a teacher for
  it; a triplet takes the best such proposal as the positive and the proposals that scored
  below the incumbent as negatives.
- Recorded evaluations (`prompts/gsm8k_100_instructions_qwen2.5-7b.json`, and the dev grid's
  instructions by their mean error over its exemplar sets): each instruction of the worst
  quarter is paired with the most similar one (word overlap) of the best quarter as its teacher;
  a triplet takes that teacher as the positive and the two worst instructions as negatives.

`SAMPLE` is the small file `promptopt neuro train --create-sample` writes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from services.common.config import datasets_dir

RECORDED = "prompts/gsm8k_100_instructions_qwen2.5-7b.json"
GRID = "hbbops_dev"

SAMPLE = {
    "distillation_pairs": [
        {
            "raw": "Solve this.",
            "teacher": "Read the problem carefully, solve it step by step, and end with the final number.",
        },
        {
            "raw": "Answer the question.",
            "teacher": "Work out the answer one calculation at a time and state the final numeric answer.",
        },
        {
            "raw": "Do the math.",
            "teacher": "List the given quantities, decide which operations connect them, compute, and check it.",
        },
        {
            "raw": "What is the answer?",
            "teacher": "Think through the word problem step by step, showing each calculation, then give the answer.",
        },
        {
            "raw": "Calculate it.",
            "teacher": "Break the problem into smaller steps, calculate each one, and report the final value.",
        },
        {
            "raw": "Find the number.",
            "teacher": "Identify what the question asks for, set up the calculation, solve it, and give the number.",
        },
    ],
    "triplets": [
        {
            "anchor": "Solve this.",
            "positive": "Read the problem carefully, solve it step by step, and end with the final number.",
            "negative": ["Just guess the answer.", "Write a poem about numbers."],
        },
        {
            "anchor": "Do the math.",
            "positive": "List the given quantities, decide which operations connect them, compute, and check it.",
            "negative": "Answer without showing any work.",
        },
        {
            "anchor": "Calculate it.",
            "positive": "Break the problem into smaller steps, calculate each one, and report the final value.",
            "negative": ["Reply with a random number.", "Ignore the question."],
        },
    ],
}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def similarity(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' words."""
    x, y = words(a), words(b)
    return len(x & y) / len(x | y) if x | y else 0.0


def from_scores(scored: list[tuple[str, float]]) -> dict:
    """Pairs and triplets from (instruction, score) records, higher scores better."""
    ranked = sorted(dict(scored).items(), key=lambda item: item[1], reverse=True)
    quarter = max(1, len(ranked) // 4)
    best, worst = [t for t, _ in ranked[:quarter]], [t for t, _ in ranked[-quarter:]]
    pairs, triplets = [], []
    for raw in worst:
        teacher = max((t for t in best if t != raw), key=lambda t: similarity(raw, t), default=None)
        if teacher is None:
            continue
        pairs.append({"raw": raw, "teacher": teacher})
        negatives = [t for t, _ in ranked[-2:] if t != raw] or [raw]
        triplets.append({"anchor": raw, "positive": teacher, "negative": negatives})
    return {"distillation_pairs": pairs, "triplets": triplets}


def from_run(doc: dict) -> dict:
    """Pairs and triplets from one run's results JSON (its comparable candidates in order)."""
    candidates = [c for c in doc.get("candidates", []) if c.get("comparable")]
    pairs, triplets = [], []
    incumbent = None
    for step in sorted({c["step"] for c in candidates}):
        children = [c for c in candidates if c["step"] == step]
        if incumbent is not None:
            better = [c for c in children if c["score"] > incumbent["score"] and c["prompt"] != incumbent["prompt"]]
            worse = [c["prompt"] for c in children if c["score"] < incumbent["score"]]
            pairs += [{"raw": incumbent["prompt"], "teacher": c["prompt"]} for c in better]
            if better and worse:
                top = max(better, key=lambda c: c["score"])["prompt"]
                triplets.append({"anchor": incumbent["prompt"], "positive": top, "negative": worse})
        best = max(children, key=lambda c: c["score"])
        if incumbent is None or best["score"] > incumbent["score"]:
            incumbent = best
    return {"distillation_pairs": pairs, "triplets": triplets}


def recorded_scores(directory: Path) -> list[list[tuple[str, float]]]:
    """(instruction, accuracy) of the recorded 100, and (instruction, 1 - mean error) of the grid."""
    out = []
    recorded = directory / RECORDED
    if recorded.is_file():
        out.append([(r["instruction"], r["accuracy"]) for r in json.loads(recorded.read_text())["results"]])
    grid = directory / GRID
    if (grid / "grid.jsonl").is_file():
        instructions = json.loads((grid / "instructions.json").read_text())
        errors: dict[int, list[float]] = {}
        for line in (grid / "grid.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                errors.setdefault(row["instruction_id"], []).append(row["error_rate"])
        out.append([(instructions[i], 1 - sum(e) / len(e)) for i, e in errors.items()])
    return out


def export_training_data(run_files: list[Path], directory: Path | None = None) -> dict:
    """The training JSON from the runs' results files and the recorded evaluations."""
    parts = [from_scores(scores) for scores in recorded_scores(directory or datasets_dir())]
    for path in run_files:
        try:
            parts.append(from_run(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not a run's results JSON ({exc})") from exc
    return {
        "distillation_pairs": [p for part in parts for p in part["distillation_pairs"]],
        "triplets": [t for part in parts for t in part["triplets"]],
    }
