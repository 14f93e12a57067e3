"""gRPC transport for llm_eval: validation, proto <-> domain conversion, service metrics."""

from __future__ import annotations

from prometheus_client import Counter
from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc

from services.common.errors import require
from services.llm_eval import convert
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.types import ModelRole

LLM_CALLS = Counter("promptopt_llm_eval_llm_calls_total", "LLM completions run (cache misses).", ["role"])
TOKENS = Counter("promptopt_llm_eval_tokens_total", "Tokens processed by the LLM.", ["role", "kind"])
CACHE_HITS = Counter("promptopt_llm_eval_cache_hits_total", "Evaluation answers served from the cache.")
QUESTIONS = Counter("promptopt_llm_eval_questions_total", "Questions scored by EvaluatePrompt.")


def _count(role: str, usage) -> None:
    LLM_CALLS.labels(role).inc(usage.llm_calls)
    TOKENS.labels(role, "prompt").inc(usage.prompt_tokens)
    TOKENS.labels(role, "completion").inc(usage.completion_tokens)


class LlmEvalServicer(llm_eval_pb2_grpc.LlmEvalServiceServicer):
    def __init__(self, evaluator: LlmEvaluator):
        self.evaluator = evaluator

    def Generate(self, request, context):
        require(
            request.role
            in (llm_eval_pb2.MODEL_ROLE_UNSPECIFIED, llm_eval_pb2.MODEL_ROLE_TASK, llm_eval_pb2.MODEL_ROLE_META),
            f"role {request.role} is not a known ModelRole",
        )
        role = ModelRole.TASK if request.role == llm_eval_pb2.MODEL_ROLE_TASK else ModelRole.META
        result = self.evaluator.generate(
            list(request.prompts), convert.params_from_proto(request.params), role, request.model
        )
        _count(role.name.lower(), result.usage)
        return convert.generate_result_to_proto(result)

    def EvaluatePrompt(self, request, context):
        domain = convert.eval_request_from_proto(request)
        try:
            result = self.evaluator.evaluate(domain, should_stop=lambda: not context.is_active())
        except Exception as exc:  # stopped or failed midway: the answers it paid for still count
            if getattr(exc, "partial_usage", None) is not None:
                _count("task", exc.partial_usage)
            raise
        _count("task", result.usage)
        CACHE_HITS.inc(result.usage.cache_hits)
        QUESTIONS.inc(result.num_evaluated)
        return convert.eval_result_to_proto(result)

    def GetDatasetInfo(self, request, context):
        require(bool(request.dataset), "dataset must be set")
        splits = self.evaluator.dataset_info(request.dataset)
        return llm_eval_pb2.GetDatasetInfoResponse(
            dataset=request.dataset, splits=[llm_eval_pb2.Split(name=k, size=v) for k, v in splits.items()]
        )

    def GetExemplars(self, request, context):
        require(bool(request.dataset), "dataset must be set")
        exemplars = self.evaluator.pool_exemplars(request.dataset, request.exemplar_pool, list(request.exemplar_ids))
        return llm_eval_pb2.GetExemplarsResponse(
            exemplars=[llm_eval_pb2.Exemplar(question=e.question, answer=e.answer) for e in exemplars]
        )

    def GetUsage(self, request, context):
        return convert.usage_report_to_proto(self.evaluator.usage())
