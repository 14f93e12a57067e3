"""Value types every service shares (Usage: the LLM work behind a result)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Usage:
    """LLM work behind a result: calls actually run, their tokens, and cache hits."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0

    def add(self, other: Usage) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
