"""The `openai` backend against a real OpenAI-compatible server: llama.cpp's, with the CPU model."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from services.llm_eval.backends import OpenAIBackend
from services.llm_eval.types import DecodingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url():
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    from services.common.shipped import ensure_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(ensure_model()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--model_alias",
            "qwen-cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_openai_backend_generates_with_usage(server_url, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "not-a-real-key")
    backend = OpenAIBackend(server_url, "qwen-cpu", api_key_env="TEST_LLM_KEY")
    [completion] = backend.generate(["What is 2 + 3? Answer with one number."], DecodingParams(max_tokens=16))
    assert "5" in completion.text
    assert completion.prompt_tokens > 5 and 0 < completion.completion_tokens <= 16


def test_openai_backend_unreachable_is_unavailable():
    from services.common.errors import UnavailableError

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "x", timeout=2)
    with pytest.raises(UnavailableError, match="127.0.0.1:9"):
        backend.generate(["hi"], DecodingParams(max_tokens=4))
