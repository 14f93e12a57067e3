"""llm_eval's typed client: the same methods and domain types as `LlmEvaluator`."""

from __future__ import annotations

from collections.abc import Sequence

from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc

from services.common.channel import BaseClient
from services.llm_eval import convert
from services.llm_eval.types import (
    DecodingParams,
    EvaluationRequest,
    EvaluationResult,
    Exemplar,
    GenerateResult,
    ModelRole,
    UsageReport,
)


class LlmEvalClient(BaseClient):
    """Same methods and types as `services.llm_eval.core.LlmEvaluator`."""

    def __init__(self, config):
        super().__init__(config)
        self.stub = llm_eval_pb2_grpc.LlmEvalServiceStub(self.channel)

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, role: ModelRole = ModelRole.META, model: str = ""
    ) -> GenerateResult:
        request = llm_eval_pb2.GenerateRequest(
            prompts=list(prompts), params=convert.params_to_proto(params), role=int(role), model=model
        )
        return convert.generate_result_from_proto(self.stub.Generate(request, timeout=self.timeout))

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        response = self.stub.EvaluatePrompt(convert.eval_request_to_proto(request), timeout=self.timeout)
        return convert.eval_result_from_proto(response)

    def dataset_info(self, dataset: str) -> dict[str, int]:
        response = self.stub.GetDatasetInfo(llm_eval_pb2.GetDatasetInfoRequest(dataset=dataset), timeout=self.timeout)
        return {s.name: s.size for s in response.splits}

    def pool_exemplars(self, dataset: str, pool: str, ids=()) -> list[Exemplar]:
        request = llm_eval_pb2.GetExemplarsRequest(dataset=dataset, exemplar_pool=pool, exemplar_ids=list(ids))
        response = self.stub.GetExemplars(request, timeout=self.timeout)
        return [Exemplar(e.question, e.answer) for e in response.exemplars]

    def usage(self) -> UsageReport:
        return convert.usage_report_from_proto(self.stub.GetUsage(llm_eval_pb2.GetUsageRequest(), timeout=self.timeout))
