"""`make bench`: encoder over gRPC vs in-process, and llm_eval questions/s on the CPU model.

Prints figures; asserts nothing about speed (targets are read from this output, not tested).
"""

from __future__ import annotations

import json
import tempfile
import time

from services.common.config import datasets_dir
from services.common.launcher import LocalStack
from services.encoder.client import EncoderClient
from services.encoder.core import SentenceTransformerEmbedder
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.types import EvaluationRequest

DATASETS = datasets_dir()


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    texts = json.loads((DATASETS / "prompts" / "ape_instructions_1000.json").read_text())[:512]
    env = {"PROMPTOPT_LLM_EVAL_DATASETS_DIR": str(DATASETS), "PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS": "256"}
    with tempfile.TemporaryDirectory() as state, LocalStack(state, names=("encoder", "llm_eval"), env=env) as stack:
        local = SentenceTransformerEmbedder()
        local.encode(texts[:8])
        with EncoderClient(stack.address("encoder")) as client:
            client.encode(texts[:8])
            t_local = best_of(lambda: local.encode(texts))
            t_grpc = best_of(lambda: client.encode(texts))
        print(f"encoder batch={len(texts)} dim={local.dimension} model={local.model_name}")
        print(f"  in-process sentence-transformers: {len(texts) / t_local:8.1f} texts/s")
        print(f"  over gRPC (loopback):            {len(texts) / t_grpc:8.1f} texts/s")
        print(f"  gRPC / in-process throughput ratio: {t_local / t_grpc:.3f}")

        n = 10
        with LlmEvalClient(stack.address("llm_eval")) as client:
            request = EvaluationRequest("Let's think step by step.", split="test", fidelity=n, shuffle_seed=123)
            start = time.perf_counter()
            result = client.evaluate(request)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            cached = client.evaluate(request)
            warm = time.perf_counter() - start
        u = result.usage
        print(f"llm_eval {result.model}, max_tokens 256, GSM8K test, {n} questions")
        print(
            f"  uncached: {n / cold:.3f} questions/s ({cold / n:.1f} s/question), accuracy {result.accuracy:.2f}, "
            f"{u.completion_tokens / cold:.1f} completion tokens/s, {u.llm_calls} LLM calls"
        )
        print(
            f"  cached:   {n / warm:.1f} questions/s, cache hits {cached.usage.cache_hits}, "
            f"LLM calls {cached.usage.llm_calls}"
        )


if __name__ == "__main__":
    main()
