"""llm_eval's typed client (the same methods and domain types as `LlmEvaluator`) and what its
callers wrap around it: `MeteredLlm` (usage, cancellation, chunked progress)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from promptopt.llm_eval.v1 import llm_eval_pb2, llm_eval_pb2_grpc

from services.common.channel import BaseClient
from services.common.errors import require
from services.common.operations import Cancelled
from services.common.splits import SplitSpec
from services.common.types import Usage
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


class LlmService(Protocol):
    """What optimisers need from llm_eval (the in-process evaluator and the gRPC client both fit)."""

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, role: ModelRole = ..., model: str = ...
    ) -> GenerateResult: ...

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult: ...

    def dataset_info(self, dataset: str) -> dict[str, int]: ...

    def pool_exemplars(self, dataset: str, pool: str, ids=()) -> list[Exemplar]: ...


@dataclasses.dataclass(frozen=True)
class Chunking:
    """How MeteredLlm splits a long evaluation: `first` questions, then chunks sized to take about
    `target_seconds` at the rate measured so far (growing at most `max_growth`x per chunk)."""

    first: int = 16
    target_seconds: float = 30.0
    max_growth: float = 4.0

    def __post_init__(self):
        require(self.first >= 1, f"chunking first must be >= 1, got {self.first}")
        require(self.target_seconds > 0, f"chunking target_seconds must be > 0, got {self.target_seconds}")
        require(self.max_growth >= 1, f"chunking max_growth must be >= 1, got {self.max_growth}")

    def next_size(self, size: int, seconds: float) -> int:
        grown = size * self.target_seconds / max(seconds, 1e-3)
        return int(min(max(grown, self.first), size * self.max_growth))


class MeteredLlm:
    """Wraps an `LlmService`: adds every call's usage to `usage` and stops calls once cancelled.

    `meta_model` names the meta-LLM this run's proposals use ('' = llm_eval's default meta model).
    With `chunking`, an evaluation of more than `chunking.first` questions is sent as growing
    prefixes of its question list (the answers of earlier prefixes are cache hits in llm_eval),
    so each call is short, a retried call repeats little, and `on_progress(done, total)` hears
    of every chunk. Answers an abandoned attempt paid for come back as cache hits on its retry,
    so a run's usage counts them as hits.
    """

    def __init__(
        self,
        service: LlmService,
        usage: Usage,
        cancelled: Callable[[], bool] = lambda: False,
        meta_model: str = "",
        chunking: Chunking | None = None,
        on_progress: Callable[[int, int], None] = lambda done, total: None,
    ):
        self.service = service
        self.usage = usage
        self.meta_model = meta_model
        self.chunking = chunking
        self.on_progress = on_progress
        self._cancelled = cancelled
        self._split_sizes: dict[tuple[str, str], int] = {}

    def _check(self):
        if self._cancelled():
            raise Cancelled()

    def generate(self, prompts: Sequence[str], params: DecodingParams, model: str = "") -> list[str]:
        """Meta-LLM completions from `model` (default: the run's meta model)."""
        self._check()
        result = self.service.generate(list(prompts), params, ModelRole.META, model or self.meta_model)
        self.usage.add(result.usage)
        return [c.text for c in result.completions]

    def evaluate(self, request: EvaluationRequest) -> EvaluationResult:
        self._check()
        total = self._question_count(request)
        if self.chunking is None or total <= self.chunking.first:
            result = self.service.evaluate(request)
            self.usage.add(result.usage)
            return result
        done, size, spent = 0, self.chunking.first, Usage()
        while done < total:
            self._check()
            upto = min(total, done + size)
            if request.question_indices:
                part = dataclasses.replace(request, question_indices=request.question_indices[:upto])
            else:
                part = dataclasses.replace(request, fidelity=upto)
            started = time.monotonic()
            result = self.service.evaluate(part)
            # the first `done` questions were answered by this evaluation's earlier chunks (an answer
            # lost in between, e.g. with a wiped cache, is paid again and shows as an LLM call)
            chunk = dataclasses.replace(result.usage, cache_hits=max(0, result.usage.cache_hits - done))
            self.usage.add(chunk)
            spent.add(chunk)
            size = self.chunking.next_size(upto - done, time.monotonic() - started)
            done = upto
            self.on_progress(done, total)
        return dataclasses.replace(result, usage=spent)

    def _question_count(self, request: EvaluationRequest) -> int:
        """Questions the request covers; with chunking, a fidelity beyond the split fails here,
        before any chunk is paid for."""
        if request.question_indices or self.chunking is None:
            return len(request.question_indices) or request.fidelity
        key = (request.dataset, request.split)
        if key not in self._split_sizes:
            self._split_sizes[key] = self.split_size(request.dataset, request.split)
        size = self._split_sizes[key]
        if request.fidelity > size:
            raise ValueError(f"fidelity {request.fidelity} exceeds the {size} questions of split {request.split!r}")
        return request.fidelity or size

    def pool_exemplars(self, dataset: str, pool: str, ids=()) -> list[Exemplar]:
        """Examples of a pool split as few-shot exemplars (no LLM call)."""
        return self.service.pool_exemplars(dataset, pool, ids)

    def split_size(self, dataset: str, split: str, field: str = "evaluation.split") -> int:
        """Questions in `split` (a split or a slice of one, e.g. `test[:50%]`)."""
        return split_size(self.service.dataset_info(dataset), dataset, split, field)


def split_size(sizes: dict[str, int], dataset: str, split: str, field: str) -> int:
    """Size of `split` given the dataset's base split sizes; ValueError naming `field` if unknown."""
    spec = SplitSpec.parse(split, field)
    if spec.base not in sizes:
        raise ValueError(f"{field} {split!r}: dataset {dataset!r} has no split {spec.base!r} (has {sorted(sizes)})")
    return len(spec.bounds(sizes[spec.base]))
