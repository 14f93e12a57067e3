"""SQLite cache of LLM answers keyed by everything that changes an answer: the backend's
identity (model, weights, context size, chat template, replay table and seed, ...), the prompt
template, the instruction, the dataset file, the question and the decoding params.

Every evaluated (prompt, question) pair is stored once, so a higher fidelity only pays for
the questions it adds and a restarted job never pays twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

from services.common.database import open_database, transaction
from services.llm_eval import gsm8k
from services.llm_eval.types import DecodingParams


def prompt_hash(instruction: str, exemplars=()) -> str:
    """Stable hash of a prompt (sha256 hex, first 16 chars): the instruction alone for zero-shot,
    else the instruction, the ordered (question, answer) exemplars and their block template."""
    if not exemplars:
        payload = instruction
    else:
        payload = json.dumps([gsm8k.EXEMPLAR_TEMPLATE, instruction, [[q, a] for q, a in exemplars]])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class AnswerContext:
    """What an answer depends on besides the instruction and the question.

    backend: `LLMBackend.identity()`; template: the prompt template; dataset_digest: the
    dataset file's sha256; split: the base split the question index refers to.
    """

    backend: dict
    template: str
    dataset: str
    dataset_digest: str
    split: str
    params: DecodingParams

    def digest(self) -> str:
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def answer_key(context: str, p_hash: str, question_index: int) -> str:
    """Cache key of one answer: an `AnswerContext.digest()`, the instruction's hash and the question."""
    return hashlib.sha256(f"{context}\0{p_hash}\0{question_index}".encode()).hexdigest()


@dataclasses.dataclass
class CachedAnswer:
    response: str
    prompt_tokens: int
    completion_tokens: int


class AnswerCache:
    """Thread-safe SQLite answer store (WAL mode, one connection guarded by a lock)."""

    def __init__(self, path: str | Path):
        self._path = path
        self._conn = open_database(
            path,
            "answer cache",
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT, prompt_hash TEXT,"
            " dataset TEXT, split TEXT, question_index INTEGER, params TEXT, response TEXT,"
            " prompt_tokens INTEGER, completion_tokens INTEGER, created REAL DEFAULT (julianday('now')))",
        )
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> dict[str, CachedAnswer]:
        found = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows = self._conn.execute(
                    f"SELECT key, response, prompt_tokens, completion_tokens FROM answers"
                    f" WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
                found.update({k: CachedAnswer(r, p, c) for k, r, p, c in rows})
        return found

    def put(self, key: str, meta: tuple, answer: CachedAnswer) -> None:
        """Store one answer; `meta` is (model, prompt_hash, dataset, split, question_index, params_json)."""
        self.put_many([(key, meta, answer)])

    def put_many(self, rows: list[tuple[str, tuple, CachedAnswer]]) -> None:
        """Store (key, meta, answer) rows in one transaction (one commit per backend batch)."""
        with self._lock, transaction(self._conn, "answer cache", self._path):
            self._conn.executemany(
                "INSERT OR REPLACE INTO answers (key, model, prompt_hash, dataset, split, question_index,"
                " params, response, prompt_tokens, completion_tokens) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(k, *m, a.response, a.prompt_tokens, a.completion_tokens) for k, m, a in rows],
            )

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
