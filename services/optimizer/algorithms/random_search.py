"""Random search: the baseline every optimiser is compared with.

Draws `num_candidates` distinct candidates from a pool, without replacement and seeded by the
run's seed, and scores each at full fidelity on the same validation questions; the best
validation score wins. The pool is a list of instructions (given inline, else the shipped APE
pool), or with `grid` the instruction x exemplar-set pairs of a recorded grid under the datasets
directory (e.g. `hbbops_dev`: its instructions.json x exemplar_sets.json).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import ClassVar

from services.common.config import datasets_dir, default_pool_path
from services.common.settings import Settings, setting
from services.llm_eval.types import Exemplar
from services.optimizer.algorithms.base import (
    DEBUG,
    DEBUG_FIDELITY,
    MAX_PROMPT_CHARS,
    Optimizer,
    best_comparable,
    check_prompts,
)
from services.optimizer.algorithms.registry import register

MAX_INSTRUCTIONS = 10_000  # instructions a request may carry


@functools.lru_cache(maxsize=8)
def read_pool(path: str) -> tuple:
    """A JSON file of the datasets directory, read once per process (a run asks for its pool every step)."""
    return tuple(json.loads(Path(path).read_text()))


def load_grid(name: str) -> tuple[tuple[str, ...], list[list[dict]]]:
    """The instructions and exemplar sets of the recorded grid `name` under the datasets directory;
    ValueError naming `random.grid`."""
    folder = datasets_dir() / name
    if not name.replace("_", "").replace("-", "").isalnum() or not folder.is_dir():
        raise ValueError(f"random.grid {name!r}: no such grid under the datasets directory")
    try:
        instructions = read_pool(str(folder / "instructions.json"))
        sets = read_pool(str(folder / "exemplar_sets.json"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"random.grid {name!r}: expected instructions.json and exemplar_sets.json ({exc})") from exc
    return instructions, [[{"question": e["question"], "answer": e["answer"]} for e in s] for s in sets]


def exemplar_ids(sets: list[list[dict]], index: int) -> list[int]:
    """Ids of set `index`'s exemplars in the grid's pool (every set's exemplars, in order)."""
    start = sum(len(s) for s in sets[:index])
    return list(range(start, start + len(sets[index])))


@dataclasses.dataclass(frozen=True)
class RandomSearchConfig(Settings):
    """Random search over a candidate pool at full fidelity."""

    section: ClassVar[str] = "random"

    num_candidates: int = setting(
        20, "candidates drawn from the pool, each scored at full fidelity", low=1, high=MAX_INSTRUCTIONS, debug=4
    )
    instructions: tuple[str, ...] = setting((), "candidate instructions (repeatable; none: the shipped APE pool)")
    grid: str = setting("", "a recorded grid under the datasets directory: draw instruction x exemplar-set pairs")
    debug: bool = DEBUG.field(help=f"small run: 4 candidates scored on {DEBUG_FIDELITY} questions (unset fields)")

    def validate(self):
        check_prompts(self.section, self.instructions, "instructions", allow_empty=True)
        if len(self.instructions) > MAX_INSTRUCTIONS or any(len(i) > MAX_PROMPT_CHARS for i in self.instructions):
            raise ValueError(
                f"random.instructions: at most {MAX_INSTRUCTIONS} instructions of {MAX_PROMPT_CHARS} characters"
            )
        if self.grid and self.instructions:
            raise ValueError("random.instructions and random.grid exclude each other")
        if self.grid:
            load_grid(self.grid)

    def search_steps(self) -> int:
        return 1 + min(self.num_candidates, len(self.pool()))  # the draw, then one candidate per step

    def pool(self) -> list[tuple[str, int | None]]:
        """Every candidate: (instruction, exemplar set index or None)."""
        if self.grid:
            instructions, sets = load_grid(self.grid)
            return [(i, s) for i in instructions for s in range(len(sets))]
        return [(i, None) for i in dict.fromkeys(self.instructions or read_pool(default_pool_path()))]


@register("random", RandomSearchConfig, summary="random search over an instruction list or a recorded grid")
class RandomSearchOptimizer(Optimizer):
    """Step 0 draws the candidates; step k scores candidate k; the held-out step reports the best."""

    def nvalid(self) -> int:
        """Full fidelity: `fidelity`, else 20 questions in debug runs, else the whole validation split."""
        return self.validation_questions()

    def initial_state(self) -> dict:
        return {"step": 0, "history": [], "candidates": []}

    def winner(self, state: dict) -> dict | None:
        top = best_comparable(state["history"])
        if top is None or not self.config.grid:
            return top
        pool = [e for s in load_grid(self.config.grid)[1] for e in s]
        return {**top, "exemplars": [Exemplar(**pool[i]) for i in top["exemplar_ids"]]}

    def search_step(self, state: dict) -> None:
        step = state["step"]
        if step == 0:
            pool = self.config.pool()
            picks = random.Random(self.evaluation.seed).sample(
                range(len(pool)), min(self.config.num_candidates, len(pool))
            )
            state["candidates"] = [list(pool[i]) for i in picks]
            self.emit("progress", {"message": f"drew {len(picks)} of {len(pool)} candidates"})
            return
        instruction, set_index = state["candidates"][step - 1]
        sets = load_grid(self.config.grid)[1] if set_index is not None else []
        exemplars = tuple(Exemplar(**e) for e in sets[set_index]) if sets else ()
        result = self.llm.evaluate(self.evaluation.request(instruction, self.nvalid(), exemplars=exemplars))
        ids = exemplar_ids(sets, set_index) if sets else ()
        self.record(state, instruction, result.accuracy, result.num_evaluated, exemplar_ids=ids)
