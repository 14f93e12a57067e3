"""Print the mutation score of the last `mutmut run` (make mutation), per mutated module.

Score = killed / mutants: a mutant counts as killed when a test failed on it (timeouts and
crashes are listed apart, not counted as kills). Reads mutmut's `mutants/<path>.meta` files."""

from __future__ import annotations

import collections
import json
import sys
import tomllib
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", None: "not checked"}
STATUS.update(dict.fromkeys((36, 24, -24, 152, 255), "timeout"))
STATUS.update(dict.fromkeys((-11, -9), "crashed"))
COLUMNS = ("killed", "survived", "no tests", "timeout", "crashed", "not checked")


def main(root: Path = Path(".")) -> int:
    modules = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    totals: collections.Counter = collections.Counter()
    print(f"{'module':48} {'mutants':>7} " + " ".join(f"{c:>11}" for c in COLUMNS) + "   score")
    for module in modules:
        meta = root / "mutants" / f"{module}.meta"
        if not meta.is_file():
            print(f"{module}: no results (run `make mutation`)")
            return 1
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        counts = collections.Counter(STATUS.get(code, "crashed") for code in codes)
        totals.update(counts)
        n = sum(counts.values())
        row = " ".join(f"{counts[c]:>11}" for c in COLUMNS)
        print(f"{module:48} {n:>7} {row}   {counts['killed'] / n:.1%}")
    n = sum(totals.values())
    row = " ".join(f"{totals[c]:>11}" for c in COLUMNS)
    print(f"{'all':48} {n:>7} {row}   {totals['killed'] / n:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
