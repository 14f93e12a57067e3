"""What the end-to-end benches share: CLI commands timed, and the newest results file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from services.cli import main as cli


def newest(directory: Path, pattern: str) -> dict:
    return json.loads(max(directory.glob(pattern), key=lambda p: p.stat().st_mtime).read_text())


def timed(label: str, argv: list[str]) -> float:
    started = time.monotonic()
    code = cli.main(argv)
    seconds = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"{label} failed (exit {code})")
    print(f"{label}: {seconds:.0f} s")
    return seconds
