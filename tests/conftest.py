"""Shared fixtures: the dataset directory, the real CPU LLM and embedder, in-process gRPC servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
DATASETS = config.datasets_dir()


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where CUDA is available (`pytest -m gpu` on a GPU box) and are skipped elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    assert (DATASETS / "gsm8k" / "test.jsonl").is_file(), f"GSM8K not found under {DATASETS} (PROMPTOPT_DATASETS_DIR)"
    return DATASETS


@pytest.fixture(scope="session")
def llm_backend():
    """The embedded CPU model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M via llama.cpp)."""
    from services.llm_eval.backends import LlamaCppBackend

    return LlamaCppBackend.embedded(n_ctx=2048)


@pytest.fixture(scope="session")
def embedder():
    from services.encoder.core import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture
def evaluator(llm_backend, datasets_dir, tmp_path):
    """A real LlmEvaluator with a fresh SQLite cache and short answers (fast tests)."""
    from services.llm_eval.cache import AnswerCache
    from services.llm_eval.core import LlmEvaluator
    from services.llm_eval.datasets import DatasetStore

    return LlmEvaluator(
        llm_backend, llm_backend, DatasetStore(datasets_dir), AnswerCache(tmp_path / "a.sqlite"), default_max_tokens=48
    )


def start_server(*bindings, load=None):
    """Serve the bindings on a free loopback port (no metrics port, no signal handlers)."""
    from services.common.config import ServerConfig
    from services.common.server import serve

    running = serve(ServerConfig(port=0, metrics_port=-1), list(bindings), load=load, install_signal_handlers=False)
    assert running.ready.wait(60), "server did not become ready"
    return running


def replay_evaluator(work: Path, cache_path: Path | None = None):
    """An LlmEvaluator answering with the replay backend over the recorded 100-instruction table
    (GSM8K test): cheap, deterministic answers. Returns (evaluator, one recorded instruction)."""
    from services.llm_eval.cache import AnswerCache
    from services.llm_eval.core import LlmEvaluator
    from services.llm_eval.datasets import DatasetStore
    from services.llm_eval.replay import ReplayBackend, convert_results, load_table

    work.mkdir(parents=True, exist_ok=True)
    convert_results(DATASETS / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json", work / "table.jsonl")
    table = load_table(work / "table.jsonl")
    datasets = DatasetStore(DATASETS)
    backend = ReplayBackend(table, datasets.load("gsm8k", "test"))
    cache = AnswerCache(cache_path or work / "answers.sqlite")
    return LlmEvaluator(backend, backend, datasets, cache), next(iter(table))[0]
