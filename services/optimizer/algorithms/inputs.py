"""What users upload for a run (ArtifactService kinds of the optimizer), parsed from content:
instruction lists, exemplar sets and recorded evaluations. A run names them by artifact id."""

from __future__ import annotations

import json

from services.common.artifacts import json_content, json_or_jsonl
from services.common.settings import MAX_LIST_ITEMS, MAX_TEXT_CHARS
from services.llm_eval.types import Exemplar


def parse_instructions(content: bytes) -> list[str]:
    """A JSON list of at least 2 distinct instruction strings (duplicates dropped, order kept)."""
    rows = json_content(content)
    if not isinstance(rows, list) or not all(isinstance(r, str) and r.strip() for r in rows):
        raise ValueError("expected a JSON list of non-empty instruction strings")
    _check_size(rows)
    rows = list(dict.fromkeys(rows))
    if len(rows) < 2:
        raise ValueError(f"it holds {len(rows)} distinct instruction(s); at least 2 are needed")
    return rows


def parse_exemplar_sets(content: bytes) -> list[list[dict]]:
    """A JSON list of exemplar sets, each a list of distinct {question, answer}."""
    sets = json_content(content)
    try:
        sets = [[{"question": e["question"], "answer": e["answer"]} for e in s] for s in sets]
        for s in sets:
            for e in s:
                Exemplar(e["question"], e["answer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"expected a JSON list of lists of {{question, answer}} ({exc})") from None
    if not sets:
        raise ValueError("it holds no exemplar set")
    _check_size(sets)
    repeated = [i for i, s in enumerate(sets) if len({(e["question"], e["answer"]) for e in s}) < len(s)]
    if repeated:
        raise ValueError(f"sets {repeated[:5]} show the same exemplar twice")
    return sets


def check_slots(sets: list[list[dict]], num_slots: int, field: str) -> None:
    """ValueError naming `field` when a set has more exemplars than `num_slots`."""
    too_big = [i for i, s in enumerate(sets) if len(s) > num_slots]
    if too_big:
        raise ValueError(f"{field}: sets {too_big[:5]} have more than num_slots={num_slots} exemplars")


def parse_evaluations(content: bytes) -> list[dict]:
    """Evaluated instructions as [{instruction, error, n}] from a results JSON (`results` with
    accuracy or correct/total), a JSON list, or JSONL rows (error_rate or accuracy, optional n)."""
    rows = json_or_jsonl(content)
    if isinstance(rows, dict):  # a results JSON, or JSONL of one row
        rows = rows["results"] if "results" in rows else [rows]
    if not isinstance(rows, list):
        raise ValueError("expected a list of evaluated instructions")
    _check_size(rows)
    out = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise ValueError("every row needs an instruction and an accuracy or error_rate")
        try:
            error = float(row["error_rate"]) if "error_rate" in row else 1.0 - float(row["accuracy"])
            n = int(row.get("n", row.get("total", 0)))
        except KeyError:
            raise ValueError(f"row without accuracy or error_rate: {row['instruction'][:80]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"row {row['instruction'][:80]!r}: {exc}") from None
        if not 0.0 <= error <= 1.0 or n < 0:
            raise ValueError(f"row {row['instruction'][:80]!r}: error {error} must lie in [0, 1] and n >= 0")
        out.append({"instruction": row["instruction"], "error": error, "n": n})
    if not out:
        raise ValueError("no evaluated instructions")
    return out


def _check_size(rows: list) -> None:
    if len(rows) > MAX_LIST_ITEMS:
        raise ValueError(f"it holds {len(rows)} items; at most {MAX_LIST_ITEMS}")
    longest = max((len(json.dumps(r)) for r in rows), default=0)
    if longest > 4 * MAX_TEXT_CHARS:
        raise ValueError(f"an item is {longest} characters long; at most {4 * MAX_TEXT_CHARS}")


# The ArtifactService kinds the optimizer takes.
INPUT_KINDS = {
    "instructions": parse_instructions,
    "exemplar_sets": parse_exemplar_sets,
    "evaluations": parse_evaluations,
}
