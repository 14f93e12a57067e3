"""Start the llm_eval service: `python -m services.llm_eval` (env `PROMPTOPT_LLM_EVAL_*`)."""

from __future__ import annotations

import logging
from pathlib import Path

from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc

from services.common.config import ServerConfig, from_env
from services.common.server import ServiceBinding, run_service, serve
from services.common.shipped import EMBEDDED_MODELS
from services.llm_eval.backends import LlamaCppBackend, LLMBackend, OpenAIBackend, VLLMBackend
from services.llm_eval.cache import AnswerCache
from services.llm_eval.config import LlmEvalConfig
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, load_table
from services.llm_eval.server import LlmEvalServicer

PREFIX = "PROMPTOPT_LLM_EVAL_"


def build_backend(config: LlmEvalConfig, backend: str, model: str) -> LLMBackend:
    if backend == "replay":
        examples = DatasetStore(config.datasets_dir).load(config.replay_dataset, config.replay_split)
        return ReplayBackend(load_table(model), examples, config.replay_seed, name=f"replay:{Path(model).stem}")
    if backend == "llamacpp":
        if model in EMBEDDED_MODELS:
            return LlamaCppBackend.embedded(model, config.n_ctx, config.n_threads)
        return LlamaCppBackend(model, model, config.n_ctx, config.n_threads)
    if backend == "openai":
        return OpenAIBackend(config.openai_base_url, model, config.openai_api_key_env)
    return VLLMBackend(model, config.vllm_tensor_parallel_size, config.vllm_gpu_memory_utilization)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server_config = from_env(ServerConfig, PREFIX)
    config = from_env(LlmEvalConfig, PREFIX)
    servicer = LlmEvalServicer(None)
    cache = AnswerCache(config.cache_path)  # before serving: an unusable cache is a start-up error

    def load():
        task = build_backend(config, config.backend, config.task_model)
        same = not config.meta_model or (
            config.meta_model == config.task_model and config.meta_backend in ("", config.backend)
        )
        meta = task if same else build_backend(config, config.meta_backend or config.backend, config.meta_model)
        servicer.evaluator = LlmEvaluator(
            task,
            meta,
            DatasetStore(config.datasets_dir),
            cache,
            config.default_max_tokens,
            config.batch_size,
            [build_backend(config, backend, model) for backend, model in config.extra()],
        )

    binding = ServiceBinding.of(
        llm_eval_pb2, "LlmEvalService", llm_eval_pb2_grpc.add_LlmEvalServiceServicer_to_server, servicer
    )
    serve(server_config, [binding], load=load).wait()


if __name__ == "__main__":
    run_service(main)
