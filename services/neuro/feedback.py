"""Users' feedback on Neuro-Latent rewrites: stored durably in SQLite, and turned into the seed's
training data for the next training run."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from services.common.database import open_database, transaction
from services.neuro.types import Feedback

TEACHER_RATING = 0.5  # feedback rated at least this is a success (a teacher and a positive)


class FeedbackStore:
    """Feedback on rewrites in an SQLite file; each submission is one committed row."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, raw_prompt TEXT NOT NULL,
        optimized_prompt TEXT NOT NULL, rating REAL NOT NULL, corrected_prompt TEXT NOT NULL,
        comment TEXT NOT NULL)"""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = open_database(self.path, "feedback store", self.SCHEMA)
        self._lock = threading.Lock()

    def add(self, feedback: Feedback) -> tuple[int, int]:
        """(the new row's id, rows stored)."""
        with self._lock, transaction(self.conn, "feedback store", self.path) as conn:
            cursor = conn.execute(
                "INSERT INTO feedback (time, raw_prompt, optimized_prompt, rating, corrected_prompt, comment) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), *dataclasses.astuple(feedback)),
            )
            total = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        return int(cursor.lastrowid), int(total)

    def list(self, limit: int, offset: int = 0) -> list[tuple[int, float, Feedback]]:
        """(id, time, feedback), newest first."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, time, raw_prompt, optimized_prompt, rating, corrected_prompt, comment FROM feedback "
                "ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [(row[0], row[1], Feedback(*row[2:])) for row in rows]

    def all(self) -> list[Feedback]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT raw_prompt, optimized_prompt, rating, corrected_prompt, comment FROM feedback ORDER BY id"
            ).fetchall()
        return [Feedback(*row) for row in rows]


def feedback_training_data(feedback: list[Feedback]) -> dict:
    """The seed's training JSON from feedback: a rewrite rated >= TEACHER_RATING, or a corrected
    prompt, is a teacher for its raw prompt; a raw prompt with both successes and failures gives
    a triplet (its best success as the positive, every failure a negative)."""
    pairs, good, bad = [], {}, {}
    for f in feedback:
        successes = [(f.rating, f.optimized_prompt)] if f.rating >= TEACHER_RATING else []
        if f.corrected_prompt.strip():
            successes.append((1.0, f.corrected_prompt))
        for rating, text in successes:
            pairs.append({"raw": f.raw_prompt, "teacher": text})
            good.setdefault(f.raw_prompt, []).append((rating, text))
        if f.rating < TEACHER_RATING:
            bad.setdefault(f.raw_prompt, []).append(f.optimized_prompt)
    triplets = [
        {"anchor": raw, "positive": max(good[raw])[1], "negative": negatives}
        for raw, negatives in bad.items()
        if raw in good
    ]
    return {"distillation_pairs": pairs, "triplets": triplets}
