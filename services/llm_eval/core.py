"""The llm_eval domain: meta-LLM generation and cached GSM8K-style prompt evaluation."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Sequence

from services.common.errors import CallerGoneError, NotFoundError
from services.common.splits import SplitSpec
from services.common.types import Usage
from services.llm_eval import gsm8k
from services.llm_eval.backends import LLMBackend
from services.llm_eval.cache import AnswerCache, AnswerContext, CachedAnswer, answer_key, prompt_hash
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.types import (
    DecodingParams,
    EvaluationRequest,
    EvaluationResult,
    Exemplar,
    GenerateResult,
    ModelRole,
    QuestionResult,
    UsageReport,
)

log = logging.getLogger(__name__)


class LlmEvaluator:
    """Serves Generate and EvaluatePrompt over a task and a meta backend, with an answer cache.

    Args:
        task: backend whose answers are scored.
        meta: backend for proposals/critiques (may be the same object as `task`).
        datasets: where dataset splits are read from.
        cache: the answer cache.
        default_max_tokens: used when a request's max_tokens is 0.
        batch_size: questions sent to the backend per call.
        extra: further backends `generate` serves by model name (e.g. a larger meta model).
    """

    def __init__(
        self,
        task: LLMBackend,
        meta: LLMBackend,
        datasets: DatasetStore,
        cache: AnswerCache,
        default_max_tokens: int = 512,
        batch_size: int = 16,
        extra: Sequence[LLMBackend] = (),
    ):
        self.task = task
        self.meta = meta
        self.models = {b.model_name: b for b in (*extra, meta, task)}
        self.datasets = datasets
        self.cache = cache
        self.default_max_tokens = default_max_tokens
        self.batch_size = batch_size
        self._usage = Usage()
        self._usage_lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self._inflight_lock = threading.Lock()

    def _resolve(self, params: DecodingParams) -> DecodingParams:
        if params.max_tokens:
            return params
        return dataclasses.replace(params, max_tokens=self.default_max_tokens)

    def _claim(self, batch):
        """Split `batch` into keys this call computes and (i, key, event) another call is computing,
        so concurrent requests for the same answers (a retried or resumed run) pay once."""
        mine, theirs = [], []
        with self._inflight_lock:
            for i, key in batch:
                if key in self._inflight:
                    theirs.append((i, key, self._inflight[key]))
                else:
                    self._inflight[key] = threading.Event()
                    mine.append((i, key))
        return mine, theirs

    def _release(self, keys) -> None:
        with self._inflight_lock:
            for key in keys:
                self._inflight.pop(key).set()

    def _record(self, usage: Usage) -> None:
        with self._usage_lock:
            self._usage.add(usage)

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, role: ModelRole = ModelRole.META, model: str = ""
    ) -> GenerateResult:
        """Complete each prompt with `model` if named, else the model of `role` (no caching:
        sampling is the point)."""
        if not prompts:
            raise ValueError("prompts must not be empty")
        if any(not p.strip() for p in prompts):
            raise ValueError("prompts must not contain empty strings")
        if model and model not in self.models:
            raise ValueError(f"model {model!r} is not served here (serves: {sorted(self.models)})")
        backend = self.models[model] if model else self.task if role == ModelRole.TASK else self.meta
        completions = backend.generate(list(prompts), self._resolve(params))
        usage = Usage(
            llm_calls=len(completions),
            prompt_tokens=sum(c.prompt_tokens for c in completions),
            completion_tokens=sum(c.completion_tokens for c in completions),
        )
        self._record(usage)
        return GenerateResult(completions, usage, backend.model_name)

    def question_indices(self, request: EvaluationRequest) -> list[int]:
        """The questions a request covers, validated against the split size."""
        size = len(self.datasets.load(request.dataset, request.split))
        if size == 0:
            raise ValueError(f"split {request.split!r} of dataset {request.dataset!r} has no questions")
        if request.question_indices:
            bad = [i for i in request.question_indices if i >= size]
            if bad:
                raise ValueError(f"question_indices {bad[:5]} out of range for split of size {size}")
            return list(request.question_indices)
        if request.fidelity > size:
            raise ValueError(f"fidelity {request.fidelity} exceeds split size {size}")
        order = self.datasets.order(request.dataset, request.split, request.shuffle_seed)
        return order[: request.fidelity or size]

    def pool_exemplars(self, dataset: str, pool: str, ids: Sequence[int] = ()) -> list[Exemplar]:
        """Examples `ids` (default all) of the pool split as exemplars: the question and the
        GSM8K solution as `gsm8k.exemplar_answer` writes it."""
        SplitSpec.parse(pool, "exemplar_pool")
        try:
            examples = self.datasets.load(dataset, pool)
        except NotFoundError as exc:
            raise ValueError(f"exemplar_pool {pool!r}: {exc}") from exc
        if not examples:
            raise ValueError(f"exemplar_pool {pool!r} is empty")
        bad = [i for i in ids if not 0 <= i < len(examples)]
        if bad:
            raise ValueError(f"exemplar_ids {bad[:5]} out of range for exemplar_pool of size {len(examples)}")
        chosen = ids or range(len(examples))
        return [Exemplar(examples[i].question, gsm8k.exemplar_answer(examples[i].answer)) for i in chosen]

    def exemplars(self, request: EvaluationRequest) -> list[tuple[str, str]]:
        """The request's few-shot (question, answer) pairs: inline, or looked up in its pool split,
        which must not share a question with the evaluated split."""
        if not request.exemplar_ids:
            return [(e.question, e.answer) for e in request.exemplars]
        shots = self.pool_exemplars(request.dataset, request.exemplar_pool, request.exemplar_ids)
        pool_spec, eval_spec = SplitSpec.parse(request.exemplar_pool), SplitSpec.parse(request.split)
        if eval_spec.base == pool_spec.base:
            size = len(self.datasets.load(request.dataset, pool_spec.base))
            if pool_spec.overlaps(eval_spec, size):
                raise ValueError(
                    f"exemplar_pool {request.exemplar_pool!r} overlaps the evaluation split {request.split!r}"
                )
        return [(e.question, e.answer) for e in shots]

    def evaluate(self, request: EvaluationRequest, should_stop: Callable[[], bool] = lambda: False) -> EvaluationResult:
        """Score an instruction (with its exemplars); only questions missing from the cache reach the LLM.

        Question indices are the split's own (a slice counts from its start); cache keys use the
        base split's indices, so a slice shares answers with its base split.
        """
        examples = self.datasets.load(request.dataset, request.split)
        indices = self.question_indices(request)
        shots = self.exemplars(request)
        params = self._resolve(request.params)
        model = self.task.model_name
        p_hash = prompt_hash(request.instruction, shots)
        base_split, base = self.datasets.base_indices(request.dataset, request.split)
        context = AnswerContext(
            self.task.identity(),
            gsm8k.PROMPT_TEMPLATE,
            request.dataset,
            self.datasets.digest(request.dataset, request.split),
            base_split,
            params,
        ).digest()
        keys = [answer_key(context, p_hash, base[i]) for i in indices]
        answers = self.cache.get_many(keys)
        usage = Usage(cache_hits=len(answers))
        cached = set(answers)
        missing = [(i, k) for i, k in zip(indices, keys, strict=True) if k not in answers]
        params_json = json.dumps(dataclasses.asdict(params), sort_keys=True)
        step = min(self.batch_size, self.task.max_batch or self.batch_size)
        try:
            while missing:
                if should_stop():
                    log.info("evaluation stopped after %d new answers: the caller went away", usage.llm_calls)
                    raise CallerGoneError("evaluation stopped: the caller went away or its deadline passed")
                batch, missing = missing[:step], missing[step:]
                mine, theirs = self._claim(batch)
                try:
                    if mine:
                        prompts = [
                            gsm8k.format_prompt(examples[i].question, request.instruction, shots) for i, _ in mine
                        ]
                        rows = []
                        for (i, key), completion in zip(mine, self.task.generate(prompts, params), strict=True):
                            answer = CachedAnswer(
                                completion.text, completion.prompt_tokens, completion.completion_tokens
                            )
                            meta = (model, p_hash, request.dataset, base_split, base[i], params_json)
                            rows.append((key, meta, answer))
                            answers[key] = answer
                            usage.llm_calls += 1
                            usage.prompt_tokens += completion.prompt_tokens
                            usage.completion_tokens += completion.completion_tokens
                        self.cache.put_many(rows)
                finally:
                    self._release([key for _, key in mine])
                if theirs:  # answered by a concurrent request; a failed one leaves them to us
                    for event in {id(e): e for _, _, e in theirs}.values():
                        event.wait()
                    found = self.cache.get_many([key for _, key, _ in theirs])
                    answers.update(found)
                    cached.update(found)
                    usage.cache_hits += len(found)
                    missing += [(i, key) for i, key, _ in theirs if key not in found]
        except Exception as exc:
            self._record(usage)
            exc.partial_usage = usage  # the answers it paid for before failing stay cached and counted
            raise
        self._record(usage)
        results = []
        for i, key in zip(indices, keys, strict=True):
            predicted = gsm8k.extract_last_number(answers[key].response)
            results.append(
                QuestionResult(
                    question_index=i,
                    question=examples[i].question,
                    response=answers[key].response,
                    predicted=predicted or "",
                    gold=examples[i].gold,
                    correct=gsm8k.is_correct(predicted, examples[i].gold),
                    cached=key in cached,
                )
            )
        correct = sum(r.correct for r in results)
        log.info(
            "evaluated %d questions (%d cached), accuracy %.3f, %d exemplars, instruction:\n%s",
            len(results),
            usage.cache_hits,
            correct / len(results),
            len(shots),
            request.instruction,
        )
        return EvaluationResult(
            accuracy=correct / len(results),
            num_correct=correct,
            num_evaluated=len(results),
            usage=usage,
            prompt_hash=p_hash,
            model=model,
            results=results if request.include_details else [],
        )

    def dataset_info(self, dataset: str) -> dict[str, int]:
        return self.datasets.splits(dataset)

    def usage(self) -> UsageReport:
        with self._usage_lock:
            usage = dataclasses.replace(self._usage)
        return UsageReport(usage, self.task.model_name, self.meta.model_name, self.cache.count(), sorted(self.models))
