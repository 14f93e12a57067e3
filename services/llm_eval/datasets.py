"""Dataset loading from a directory (`<root>/<dataset>/<split>.jsonl`), with seeded orders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from functools import cache
from pathlib import Path

from services.common.errors import NotFoundError, shown
from services.common.splits import SplitSpec
from services.llm_eval import gsm8k

DATASET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # a directory under the datasets root


@dataclasses.dataclass(frozen=True)
class Example:
    question: str
    gold: str
    answer: str = ""  # the full solution (GSM8K `answer` field), used when the example is an exemplar


class DatasetStore:
    """Reads GSM8K-style JSONL splits (`question`, `answer` with `#### n`) under `root`.

    A split argument may be a slice of a split (`test[:50%]`, see `services.common.splits`).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def splits(self, dataset: str) -> dict[str, int]:
        """Split name -> number of examples (base splits; slices of them are also accepted)."""
        directory = self._dir(dataset)
        return {p.stem: len(self._base(dataset, p.stem)) for p in sorted(directory.glob("*.jsonl"))}

    def load(self, dataset: str, split: str) -> tuple[Example, ...]:
        spec = SplitSpec.parse(split)
        examples = self._base(dataset, spec.base)
        rows = spec.bounds(len(examples))
        return examples[rows.start : rows.stop]

    def base_indices(self, dataset: str, split: str) -> tuple[str, range]:
        """(base split, the base-split indices of the split's questions, in order)."""
        spec = SplitSpec.parse(split)
        return spec.base, spec.bounds(len(self._base(dataset, spec.base)))

    def digest(self, dataset: str, split: str) -> str:
        """sha256 of the base split's file: cached answers are tied to the questions' exact text."""
        return _digest(self._dir(dataset) / f"{SplitSpec.parse(split).base}.jsonl")

    def _base(self, dataset: str, split: str) -> tuple[Example, ...]:
        return _read(self._dir(dataset) / f"{split}.jsonl", dataset, split)

    def order(self, dataset: str, split: str, seed: int) -> list[int]:
        """The split's indices shuffled once with `seed`; prefixes are nested fidelities."""
        indices = list(range(len(self.load(dataset, split))))
        random.Random(seed).shuffle(indices)
        return indices

    def _dir(self, dataset: str) -> Path:
        if not DATASET_NAME.fullmatch(dataset):
            raise ValueError(
                f"dataset {shown(dataset)!r} is not a valid dataset name (letters, digits, . _ -; at most 64)"
            )
        directory = self.root / dataset
        if not directory.is_dir():
            raise NotFoundError(f"dataset {dataset!r} not found under {self.root}")
        return directory


@cache
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def _read(path: Path, dataset: str, split: str) -> tuple[Example, ...]:
    if not path.is_file():
        raise NotFoundError(f"split {split!r} of dataset {dataset!r} not found ({path})")
    examples = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                examples.append(Example(row["question"], gsm8k.gold_answer(row["answer"]), row["answer"]))
    return tuple(examples)


GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"


def download_gsm8k(root: str | Path) -> list[Path]:
    """Fetch GSM8K train/test into `<root>/gsm8k/` (MIT licence); files already there are kept."""
    import urllib.request

    target = Path(root) / "gsm8k"
    target.mkdir(parents=True, exist_ok=True)
    fetched = []
    for split in ("train", "test"):
        path = target / f"{split}.jsonl"
        if not path.is_file():
            partial = path.with_suffix(".part")
            urllib.request.urlretrieve(GSM8K_URL.format(split=split), partial)
            partial.rename(path)
            fetched.append(path)
    return fetched


def verify(root: str | Path) -> list[str]:
    """Problems with the files `<root>/registry.json` lists (missing, or another sha256); empty when all match."""
    root = Path(root)
    registry = json.loads((root / "registry.json").read_text())
    problems = []
    for name, entry in registry.items():
        for relative, expected in entry["files"].items():
            path = root / relative
            if not path.is_file():
                problems.append(f"{name}: {relative} is missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != expected:
                problems.append(f"{name}: {relative} does not match its sha256 in registry.json")
    return problems


USAGE = "usage: python -m services.llm_eval.datasets download DIR | verify [DIR]"


def main(argv: list[str] | None = None) -> int:
    """`download DIR` (the k8s init container, `make gsm8k`); `verify [DIR]` checks the registry's checksums."""
    import sys

    from services.common.config import datasets_dir

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"] and len(argv) <= 2:
        root = Path(argv[1]) if len(argv) == 2 else datasets_dir()
        problems = verify(root)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{root}: {'all files match registry.json' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    if len(argv) != 2 or argv[0] != "download":
        print(USAGE, file=sys.stderr)
        return 2
    fetched = download_gsm8k(argv[1])
    print(f"GSM8K in {Path(argv[1]) / 'gsm8k'}: fetched {len(fetched)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
