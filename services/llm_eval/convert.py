"""llm_eval's proto <-> domain conversion, shared by its server (requests in) and client (responses in)."""

from __future__ import annotations

from promptopt.llm_eval.v1 import llm_eval_pb2

from services.common.convert import usage_from_proto, usage_to_proto
from services.llm_eval.types import (
    Completion,
    DecodingParams,
    EvaluationRequest,
    EvaluationResult,
    Exemplar,
    GenerateResult,
    QuestionResult,
    UsageReport,
)


def params_to_proto(params: DecodingParams) -> llm_eval_pb2.DecodingParams:
    return llm_eval_pb2.DecodingParams(
        temperature=params.temperature, max_tokens=params.max_tokens, top_p=params.top_p, seed=params.seed
    )


def params_from_proto(msg: llm_eval_pb2.DecodingParams) -> DecodingParams:
    """Validated params; top_p 0 (unset) means 1."""
    return DecodingParams(temperature=msg.temperature, max_tokens=msg.max_tokens, top_p=msg.top_p or 1.0, seed=msg.seed)


def eval_request_to_proto(request: EvaluationRequest) -> llm_eval_pb2.EvaluatePromptRequest:
    return llm_eval_pb2.EvaluatePromptRequest(
        instruction=request.instruction,
        dataset=request.dataset,
        split=request.split,
        fidelity=request.fidelity,
        shuffle_seed=request.shuffle_seed,
        question_indices=list(request.question_indices),
        params=params_to_proto(request.params),
        include_details=request.include_details,
        exemplars=[llm_eval_pb2.Exemplar(question=e.question, answer=e.answer) for e in request.exemplars],
        exemplar_ids=list(request.exemplar_ids),
        exemplar_pool=request.exemplar_pool,
    )


def eval_request_from_proto(msg: llm_eval_pb2.EvaluatePromptRequest) -> EvaluationRequest:
    return EvaluationRequest(
        instruction=msg.instruction,
        dataset=msg.dataset,
        split=msg.split,
        fidelity=msg.fidelity,
        shuffle_seed=msg.shuffle_seed,
        question_indices=tuple(msg.question_indices),
        params=params_from_proto(msg.params),
        include_details=msg.include_details,
        exemplars=tuple(Exemplar(e.question, e.answer) for e in msg.exemplars),
        exemplar_ids=tuple(msg.exemplar_ids),
        exemplar_pool=msg.exemplar_pool,
    )


def eval_result_to_proto(result: EvaluationResult) -> llm_eval_pb2.EvaluatePromptResponse:
    return llm_eval_pb2.EvaluatePromptResponse(
        accuracy=result.accuracy,
        num_correct=result.num_correct,
        num_evaluated=result.num_evaluated,
        usage=usage_to_proto(result.usage),
        prompt_hash=result.prompt_hash,
        model=result.model,
        results=[llm_eval_pb2.QuestionResult(**vars(r)) for r in result.results],
    )


def eval_result_from_proto(msg: llm_eval_pb2.EvaluatePromptResponse) -> EvaluationResult:
    return EvaluationResult(
        accuracy=msg.accuracy,
        num_correct=msg.num_correct,
        num_evaluated=msg.num_evaluated,
        usage=usage_from_proto(msg.usage),
        prompt_hash=msg.prompt_hash,
        model=msg.model,
        results=[
            QuestionResult(r.question_index, r.question, r.response, r.predicted, r.gold, r.correct, r.cached)
            for r in msg.results
        ],
    )


def generate_result_to_proto(result: GenerateResult) -> llm_eval_pb2.GenerateResponse:
    return llm_eval_pb2.GenerateResponse(
        completions=[llm_eval_pb2.Completion(**vars(c)) for c in result.completions],
        usage=usage_to_proto(result.usage),
        model=result.model,
    )


def generate_result_from_proto(msg: llm_eval_pb2.GenerateResponse) -> GenerateResult:
    return GenerateResult(
        [Completion(c.text, c.prompt_tokens, c.completion_tokens) for c in msg.completions],
        usage_from_proto(msg.usage),
        msg.model,
    )


def usage_report_to_proto(report: UsageReport) -> llm_eval_pb2.GetUsageResponse:
    return llm_eval_pb2.GetUsageResponse(
        usage=usage_to_proto(report.usage),
        task_model=report.task_model,
        meta_model=report.meta_model,
        cached_answers=report.cached_answers,
        models=report.models,
    )


def usage_report_from_proto(msg: llm_eval_pb2.GetUsageResponse) -> UsageReport:
    return UsageReport(
        usage_from_proto(msg.usage), msg.task_model, msg.meta_model, msg.cached_answers, list(msg.models)
    )
