"""Replay backend: answers GSM8K-style prompts from a table of recorded evaluations, no LLM.

A table is JSONL with one row per prompt: `instruction`, optional `exemplars` (a list of
{question, answer}: the few-shot set, in order), `error_rate` (on the recorded split) and `n`
(questions it was measured on). For a row, exactly
round((1 - error_rate) * n) of the questions 0..n-1 are answered correctly; which ones is a
permutation seeded by (seed, prompt), so any fidelity is a reproducible draw without
replacement from the recorded rate and the full split reproduces it exactly. A prompt not in
the table is an error. The evaluator's cache, fidelity extension and usage counting run
unchanged on top: each replayed answer counts as one LLM call (with zero tokens).

`python -m services.llm_eval.replay convert RESULTS.json TABLE.jsonl` turns a results file in
the seed's format (`results: [{instruction, correct, total}]`) into a table;
`python -m services.llm_eval.replay grid DIR TABLE.jsonl` turns an instruction x exemplar-set
grid (`instructions.json`, `exemplar_sets.json`, `grid.jsonl`, as in hbbops_dev) into one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from services.llm_eval import gsm8k
from services.llm_eval.backends import LLMBackend
from services.llm_eval.datasets import Example
from services.llm_eval.types import Completion, DecodingParams


@dataclasses.dataclass(frozen=True)
class ReplayRow:
    instruction: str
    error_rate: float
    n: int
    exemplars: str = ""  # the rendered exemplar blocks (gsm8k.format_exemplars), "" for zero-shot


def _render(exemplars) -> str:
    """A row's `exemplars` field (list of {question, answer}, or already rendered text) as prompt text."""
    if isinstance(exemplars, str):
        return exemplars
    return gsm8k.format_exemplars((e["question"], e["answer"]) for e in exemplars)


def load_table(path: str | Path) -> dict[tuple[str, str], ReplayRow]:
    """Rows keyed by (instruction, exemplars); raises ValueError naming the bad line."""
    rows: dict[tuple[str, str], ReplayRow] = {}
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                row = ReplayRow(
                    str(raw["instruction"]), float(raw["error_rate"]), int(raw["n"]), _render(raw.get("exemplars", ""))
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: a row needs instruction, error_rate and n ({exc})") from exc
            if not 0.0 <= row.error_rate <= 1.0 or row.n <= 0 or not row.instruction.strip():
                raise ValueError(f"{path}:{number}: error_rate must be in [0, 1], n > 0, instruction non-empty")
            rows[(row.instruction, row.exemplars)] = row
    if not rows:
        raise ValueError(f"{path}: the replay table is empty")
    return rows


def _wrong(gold: str) -> str:
    try:
        return str(float(gold) + 1)
    except ValueError:
        return "0"


class ReplayBackend(LLMBackend):
    """Answers Q_end prompts for recorded instructions (see the module docstring).

    Args:
        table: rows from `load_table`.
        examples: the split the table was recorded on (its question order defines indices).
        seed: seeds which questions each prompt gets right.
    """

    def __init__(self, table: dict[tuple[str, str], ReplayRow], examples: Sequence[Example], seed: int = 0, name=""):
        self.model_name = name or "replay"
        self.table = table
        self.examples = examples
        self.seed = seed
        rows = sorted((r.instruction, r.exemplars, r.error_rate, r.n) for r in table.values())
        self._table_sha256 = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
        questions = [(e.question, e.gold) for e in examples]  # which question is which row, and its gold
        self._examples_sha256 = hashlib.sha256(json.dumps(questions).encode()).hexdigest()
        self._index = {example.question: i for i, example in enumerate(examples)}
        self._correct: dict[tuple[str, str], frozenset[int]] = {}

    def identity(self) -> dict:
        return {
            "backend": "replay",
            "table_sha256": self._table_sha256,
            "examples_sha256": self._examples_sha256,
            "seed": self.seed,
        }

    def correct_set(self, row: ReplayRow) -> frozenset[int]:
        """The questions this row answers correctly (cached)."""
        key = (row.instruction, row.exemplars)
        if key not in self._correct:
            digest = hashlib.sha256(f"{self.seed}\0{row.exemplars}\0{row.instruction}".encode()).digest()
            order = list(range(row.n))
            random.Random(digest).shuffle(order)
            self._correct[key] = frozenset(order[: round((1 - row.error_rate) * row.n)])
        return self._correct[key]

    def _parse(self, prompt: str) -> tuple[int, ReplayRow]:
        """(question index, row) of a prompt: exemplar blocks, then 'Q: {question}\\n{instruction}\\nA:'."""
        if prompt.endswith("\nA:"):
            starts = [0] if prompt.startswith("Q: ") else []
            starts += [m.start() + 2 for m in re.finditer("\n\nQ: ", prompt)]
            for start in starts:
                found = self._match(prompt[:start], prompt[start + 3 : -3])
                if found is not None:
                    return found
        raise ValueError(f"prompt not in the replay table (replay answers only recorded instructions):\n{prompt}")

    def _match(self, exemplars: str, body: str) -> tuple[int, ReplayRow] | None:
        cut = body.find("\n")
        while cut >= 0:
            index = self._index.get(body[:cut])
            row = self.table.get((body[cut + 1 :], exemplars))
            if index is not None and row is not None:
                if index >= row.n:
                    raise ValueError(f"question {index} is beyond the {row.n} questions recorded for the prompt")
                return index, row
            cut = body.find("\n", cut + 1)
        return None

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        out = []
        for prompt in prompts:
            index, row = self._parse(prompt)
            gold = self.examples[index].gold
            answer = gold if index in self.correct_set(row) else _wrong(gold)
            out.append(Completion(f"The answer is {answer}", 0, 0))
        return out


def convert_results(source: str | Path, target: str | Path) -> int:
    """Seed-format results JSON -> replay JSONL; returns the number of rows written."""
    document = json.loads(Path(source).read_text())
    rows = []
    for result in document.get("results", []):
        total = int(result["total"])
        rows.append(
            {"instruction": result["instruction"], "error_rate": 1 - int(result["correct"]) / total, "n": total}
        )
    if not rows:
        raise ValueError(f"{source}: no results to convert")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def convert_grid(directory: str | Path, target: str | Path) -> int:
    """An instruction x exemplar-set grid directory -> replay JSONL; returns the rows written.
    Raises ValueError naming a pair that is missing or an id out of range."""
    directory = Path(directory)
    instructions = json.loads((directory / "instructions.json").read_text())
    exemplar_sets = json.loads((directory / "exemplar_sets.json").read_text())
    rows, seen = [], set()
    for number, line in enumerate((directory / "grid.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        raw = json.loads(line)
        i, e = int(raw["instruction_id"]), int(raw["exemplar_set_id"])
        if not (0 <= i < len(instructions) and 0 <= e < len(exemplar_sets)):
            raise ValueError(f"grid.jsonl:{number}: instruction_id {i} or exemplar_set_id {e} out of range")
        seen.add((i, e))
        rows.append(
            {
                "instruction": instructions[i],
                "exemplars": exemplar_sets[e],
                "error_rate": raw["error_rate"],
                "n": raw["n"],
            }
        )
    missing = [(i, e) for i in range(len(instructions)) for e in range(len(exemplar_sets)) if (i, e) not in seen]
    if missing:
        raise ValueError(f"grid.jsonl has no row for (instruction_id, exemplar_set_id) {missing[:5]}")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.llm_eval.replay")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="seed-format results JSON -> replay table JSONL")
    convert.add_argument("source")
    convert.add_argument("target")
    grid = sub.add_parser("grid", help="instruction x exemplar-set grid directory -> replay table JSONL")
    grid.add_argument("source")
    grid.add_argument("target")
    args = parser.parse_args(argv)
    try:
        count = (convert_grid if args.command == "grid" else convert_results)(args.source, args.target)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {count} rows to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
