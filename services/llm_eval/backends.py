"""LLM backends behind one base class.

Contract of `LLMBackend.generate`: takes user messages and returns one `Completion` per
message, in order, applying the model's chat template; it must be safe to call from
several threads (backends serialise internally where the engine is not). `identity()` names
everything about the backend that changes its answers; it is part of every cached answer's key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from services.common.errors import FailedPreconditionError, OverloadedError, UnavailableError
from services.llm_eval.types import Completion, DecodingParams

log = logging.getLogger(__name__)


class LLMBackend(ABC):
    """A chat model that completes user messages. `max_batch`: prompts worth sending in one
    `generate` call (None: any number); sequential backends say 1, so each answer is cached,
    and a cancelled request stopped, as soon as it is done."""

    model_name: str
    max_batch: int | None = None

    @abstractmethod
    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        """One completion per prompt, in order."""

    @abstractmethod
    def identity(self) -> dict:
        """JSON-serialisable description of everything that changes this backend's answers."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class LlamaCppBackend(LLMBackend):
    """llama-cpp-python over a local GGUF file, on CPU (the embedded default)."""

    max_batch = 1

    def __init__(
        self, model_path: str, model_name: str = "", n_ctx: int = 4096, n_threads: int = 0, model_sha256: str = ""
    ):
        import llama_cpp  # lazy: only this backend needs it

        from services.common.shipped import sha256_file

        self.model_name = model_name or os.path.basename(model_path)
        self._llm = llama_cpp.Llama(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count(),
            verbose=False,
        )
        self._identity = {
            "backend": "llamacpp",
            "weights_sha256": model_sha256 or sha256_file(Path(model_path)),
            "n_ctx": n_ctx,
            "chat_template_sha256": _sha256(self._llm.metadata.get("tokenizer.chat_template", "")),
            "llama_cpp": llama_cpp.__version__,
        }
        self._lock = threading.Lock()

    @classmethod
    def embedded(cls, name: str = "", n_ctx: int = 4096, n_threads: int = 0) -> LlamaCppBackend:
        """An embedded model by name (default: Qwen2.5-Coder-0.5B), assembled and verified on first use."""
        from services.common.shipped import EMBEDDED_MODELS, QWEN25_CODER_05B, ensure_model

        model = EMBEDDED_MODELS[name] if name else QWEN25_CODER_05B
        return cls(str(ensure_model(model)), model.name, n_ctx, n_threads, model_sha256=model.sha256)

    def identity(self) -> dict:
        return self._identity

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

    max_batch = 1

    def __init__(self, base_url: str, model_name: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 600.0):
        self.model_name = model_name
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = os.environ.get(api_key_env, "")
        self._timeout = timeout

    def identity(self) -> dict:
        return {"backend": "openai", "url": self._url, "model": self.model_name}

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
        except urllib.error.HTTPError as exc:  # the server answered: overloaded, down, or a refused request
            message = f"OpenAI-compatible server at {self._url} answered HTTP {exc.code}: {exc.reason}"
            if exc.code == 429:
                raise OverloadedError(message) from exc
            if exc.code >= 500:
                raise UnavailableError(message) from exc
            raise FailedPreconditionError(message) from exc
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
        self._tensor_parallel_size = tensor_parallel_size
        self._lock = threading.Lock()

    def identity(self) -> dict:
        import vllm

        template = getattr(self._llm.get_tokenizer(), "chat_template", None) or ""
        return {
            "backend": "vllm",
            "model": self.model_name,
            "tp": self._tensor_parallel_size,
            "chat_template_sha256": _sha256(template),
            "vllm": vllm.__version__,
        }

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, seed=params.seed
        )
        with self._lock:
            outputs = self._llm.chat([[{"role": "user", "content": p}] for p in prompts], sampling, use_tqdm=False)
        return [Completion(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids)) for o in outputs]
