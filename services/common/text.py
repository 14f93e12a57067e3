"""Text helpers shared by services: instruction candidates parsed from free LLM output, and a
memo of an encode callable (the same instruction pools are embedded again and again)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence

import numpy as np

# Bullets, numbering, "Instruction 2:" and echoed similarity scores ("0.965: ...") before a line.
_PREFIX = re.compile(
    r"^\s*(?:(?:[-*\u2022]|\d+[.)]|[A-Za-z][.)])\s+|instruction\s*\d*\s*[:.)-]\s*|\d*\.\d+\s*[:)-]\s*)", re.I
)


def instruction_lines(text: str, max_length: int) -> list[str]:
    """One candidate instruction per line of `text`: prefixes and quotes stripped; empty lines,
    lines longer than `max_length` and preambles ("Here are ten instructions:") dropped."""
    out = []
    for line in text.splitlines():
        line = _PREFIX.sub("", line).strip().strip('"').strip("'").strip()
        preamble = line.endswith(":") and len(line.split()) > 3
        if line and len(line) <= max_length and not preamble:
            out.append(line)
    return out


class EncodeMemo:
    """Wraps `encode(texts) -> [n, d]`, encoding each distinct text once (thread-safe; the oldest
    entries are dropped beyond `max_entries`)."""

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], max_entries: int = 100_000):
        self._encode = encode
        self._rows: dict[str, np.ndarray] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        with self._lock:
            known = {t: self._rows[t] for t in texts if t in self._rows}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            rows = np.asarray(self._encode(missing))
            known.update(zip(missing, rows, strict=True))
            with self._lock:
                self._rows.update(zip(missing, rows, strict=True))
                for old in list(self._rows)[: max(0, len(self._rows) - self._max_entries)]:
                    del self._rows[old]
        return np.stack([known[t] for t in texts])
