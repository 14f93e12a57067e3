"""LLM backends behind one base class.

Contract of `LLMBackend.generate`: takes user messages and returns one `Completion` per
message, in order, applying the model's chat template; it must be safe to call from
several threads (backends serialise internally where the engine is not).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence

from services.common.errors import UnavailableError
from services.common.types import Completion, DecodingParams

log = logging.getLogger(__name__)


class LLMBackend(ABC):
    """A chat model that completes user messages."""

    model_name: str

    @abstractmethod
    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        """One completion per prompt, in order."""


class LlamaCppBackend(LLMBackend):
    """llama-cpp-python over a local GGUF file, on CPU (the embedded default)."""

    def __init__(self, model_path: str, model_name: str = "", n_ctx: int = 4096, n_threads: int = 0):
        from llama_cpp import Llama  # lazy: only this backend needs it

        self.model_name = model_name or os.path.basename(model_path)
        self._llm = Llama(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count(),
            verbose=False,
        )
        self._lock = threading.Lock()

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        out = []
        for prompt in prompts:
            with self._lock:
                response = self._llm.create_chat_completion(
                    messages=[{"role": "user", "content": prompt}],
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_tokens,
                    seed=params.seed,
                )
            usage = response["usage"]
            out.append(
                Completion(
                    response["choices"][0]["message"]["content"] or "",
                    usage["prompt_tokens"],
                    usage["completion_tokens"],
                )
            )
        return out


class OpenAIBackend(LLMBackend):
    """Any OpenAI-compatible `/v1/chat/completions` server (vLLM, llama.cpp server, hosted APIs).

    The API key is read from the environment variable named by `api_key_env` and never logged.
    """

    def __init__(self, base_url: str, model_name: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 600.0):
        self.model_name = model_name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = os.environ.get(api_key_env, "")
        self._timeout = timeout

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        return [self._one(prompt, params) for prompt in prompts]

    def _one(self, prompt: str, params: DecodingParams) -> Completion:
        body = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self._url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                data = json.load(resp)
        except (urllib.error.URLError, TimeoutError) as exc:
            raise UnavailableError(f"OpenAI-compatible server at {self._url} failed: {exc}") from exc
        usage = data.get("usage") or {}
        return Completion(
            data["choices"][0]["message"]["content"] or "",
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
        )


class VLLMBackend(LLMBackend):
    """In-process vLLM engine (GPU only; `vllm` is imported lazily and batches all prompts)."""

    def __init__(self, model_name: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85):
        from vllm import LLM  # lazy: GPU images only

        self.model_name = model_name
        self._llm = LLM(
            model=model_name,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self._lock = threading.Lock()

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=params.seed
        )
        with self._lock:
            outputs = self._llm.chat([[{"role": "user", "content": p}] for p in prompts], sampling, use_tqdm=False)
        return [Completion(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids)) for o in outputs]
