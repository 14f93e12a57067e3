"""What a tuning reads, as ArtifactService kinds of the tuner: a recorded grid (instructions,
exemplar sets and their evaluations, like hbbops_dev) and the VAE phase's instruction corpus.

A run names its uploads by id (empty: the shipped hbbops_dev grid and APE pool). The parsed
content travels with each phase study (an Optuna user attribute), so a worker on another host
reads no file of the tuner's.
"""

from __future__ import annotations

import dataclasses
import json

from services.common.artifacts import ArtifactStore, json_content, json_or_jsonl
from services.common.config import datasets_dir
from services.common.settings import MAX_LIST_ITEMS
from services.optimizer.types import upload_kinds

parse_instructions, parse_exemplar_sets = upload_kinds["instructions"], upload_kinds["exemplar_sets"]
GRID_FIELDS = ("instructions_artifact", "exemplar_sets_artifact", "grid_artifact")
SHIPPED_GRID = "hbbops_dev"  # under the datasets directory, in every tuner image
SHIPPED_CORPUS = "prompts/ape_instructions_1000.json"


def parse_grid(content: bytes) -> list[dict]:
    """Evaluations of a grid as JSONL (or a JSON list) of {instruction_id, exemplar_set_id,
    error_rate, n}: ids index the grid's instructions and exemplar sets."""
    rows = json_or_jsonl(content)
    if isinstance(rows, dict):  # JSONL of one row
        rows = [rows]
    if not isinstance(rows, list) or not rows:
        raise ValueError("expected JSONL rows of {instruction_id, exemplar_set_id, error_rate, n}")
    if len(rows) > MAX_LIST_ITEMS:
        raise ValueError(f"it holds {len(rows)} rows; at most {MAX_LIST_ITEMS}")
    out = []
    for number, row in enumerate(rows, 1):
        try:
            cell = {
                "instruction_id": row["instruction_id"],
                "exemplar_set_id": row["exemplar_set_id"],
                "error_rate": float(row["error_rate"]),
                "n": row["n"],
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"row {number}: needs instruction_id, exemplar_set_id, error_rate and n ({exc})") from None
        ints = (cell["instruction_id"], cell["exemplar_set_id"], cell["n"] - 1)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise ValueError(f"row {number}: instruction_id and exemplar_set_id must be integers >= 0, n >= 1")
        if not 0.0 <= cell["error_rate"] <= 1.0:
            raise ValueError(f"row {number}: error_rate {cell['error_rate']} must lie in [0, 1]")
        out.append(cell)
    return out


# The ArtifactService kinds the tuner takes.
INPUT_KINDS = {"instructions": parse_instructions, "exemplar_sets": parse_exemplar_sets, "grid": parse_grid}


@dataclasses.dataclass(frozen=True)
class TuningInputs:
    """A tuning's grid and corpus, parsed and checked against each other."""

    instructions: list[str]
    exemplar_sets: list[list[dict]]
    grid: list[dict]
    corpus: list[str]

    def __post_init__(self):
        cells = {(r["instruction_id"], r["exemplar_set_id"]) for r in self.grid}
        shape = (len(self.instructions), len(self.exemplar_sets))
        outside = [c for c in cells if c[0] >= shape[0] or c[1] >= shape[1]]
        if outside:
            raise ValueError(f"grid_artifact: cell {sorted(outside)[0]} lies outside the {shape[0]} x {shape[1]} grid")
        if len(cells) < shape[0] * shape[1]:
            raise ValueError(
                f"grid_artifact covers {len(cells)} of the {shape[0]} x {shape[1]} instruction x exemplar set cells"
            )

    @classmethod
    def load(cls, settings, store: ArtifactStore) -> TuningInputs:
        """The inputs `settings` name in `store` (ValueError naming the field), or the shipped ones."""
        ids = [getattr(settings, name) for name in GRID_FIELDS]
        if any(ids) and not all(ids):
            raise ValueError(f"{', '.join(GRID_FIELDS)} name one recorded grid: give all three, or none (hbbops_dev)")
        shipped = datasets_dir()
        if all(ids):
            instructions = store.load(ids[0], "instructions", GRID_FIELDS[0])
            given = json_content(store.get(ids[0]))
            sets = store.load(ids[1], "exemplar_sets", GRID_FIELDS[1])
            grid = store.load(ids[2], "grid", GRID_FIELDS[2])
        else:
            grid_dir = shipped / SHIPPED_GRID
            given = json.loads((grid_dir / "instructions.json").read_text())
            instructions = parse_instructions((grid_dir / "instructions.json").read_bytes())
            sets = parse_exemplar_sets((grid_dir / "exemplar_sets.json").read_bytes())
            grid = parse_grid((grid_dir / "grid.jsonl").read_bytes())
        if len(given) != len(instructions):  # a repeated instruction would shift the grid's ids
            raise ValueError(f"{GRID_FIELDS[0]}: the grid's instructions must be distinct")
        if settings.corpus_artifact:
            corpus = store.load(settings.corpus_artifact, "instructions", "corpus_artifact")
        else:
            corpus = parse_instructions((shipped / SHIPPED_CORPUS).read_bytes())
        return cls(instructions, sets, grid, corpus)

    def for_phase(self, phase: str, corpus_size: int) -> dict:
        """What a phase study carries for its workers: the grid, and for the VAE phase the part of
        the corpus it trains on (the grid's instructions come first; `corpus_size` others)."""
        known = set(self.instructions)
        extra = [t for t in self.corpus if t not in known][:corpus_size] if phase == "vae" else []
        return {**dataclasses.asdict(self), "corpus": extra}

    @classmethod
    def from_dict(cls, fields: dict) -> TuningInputs:
        return cls(**fields)
