"""Split specifications: a dataset split or a slice of one, in the Hugging Face datasets syntax.

`train`, `test[:50%]`, `test[50%:]`, `train[100:600]`. Percent bounds round down on the split's
size, so `X[:p%]` and `X[p%:]` partition X. Slices index the split in file order; the cache and
the replay backend see the base split's question indices, so a slice shares answers with its base.
"""

from __future__ import annotations

import dataclasses
import re

from services.common.errors import shown

_SPEC = re.compile(r"^(?P<base>[A-Za-z0-9_.-]{1,64})(?:\[(?P<start>\d{1,9}%?)?:(?P<stop>\d{1,9}%?)?\])?$")


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """A base split and optional [start:stop] bounds (ints or percentages of the split size)."""

    base: str
    start: str = ""
    stop: str = ""

    @classmethod
    def parse(cls, text: str, field: str = "split") -> SplitSpec:
        match = _SPEC.match(text or "")
        if match is None or match["base"].startswith("."):
            raise ValueError(f"{field} {shown(text or '')!r} is not a split name or slice like 'test' or 'test[:50%]'")
        spec = cls(match["base"], match["start"] or "", match["stop"] or "")
        for bound in (spec.start, spec.stop):
            if bound.endswith("%") and int(bound[:-1]) > 100:
                raise ValueError(f"{field} {text!r}: a percentage bound must be at most 100%")
        return spec

    def bounds(self, size: int) -> range:
        """The base-split indices this spec covers, for a base split of `size` examples."""

        def resolve(bound: str, default: int) -> int:
            if not bound:
                return default
            if bound.endswith("%"):
                return size * int(bound[:-1]) // 100
            return min(int(bound), size)

        start, stop = resolve(self.start, 0), resolve(self.stop, size)
        return range(start, max(start, stop))

    def overlaps(self, other: SplitSpec, size: int) -> bool:
        """Whether the two specs share any question of the same base split."""
        if self.base != other.base:
            return False
        a, b = self.bounds(size), other.bounds(size)
        return max(a.start, b.start) < min(a.stop, b.stop)

    def __str__(self) -> str:
        return self.base if not (self.start or self.stop) else f"{self.base}[{self.start}:{self.stop}]"
