"""llm_eval contract: the same assertions against the in-process evaluator and the gRPC client."""

import pytest

from services.llm_eval import gsm8k
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.types import DecodingParams, EvaluationRequest, Exemplar
from tests.conftest import DATASETS
from tests.contract.conftest import invalid_argument


def test_dataset_info(llm_service):
    assert llm_service.dataset_info("gsm8k") == {"test": 1319, "train": 7473}


def test_evaluate_is_cached_and_fidelity_extends(llm_service):
    first = llm_service.evaluate(
        EvaluationRequest("Answer with a number.", split="test", fidelity=2, shuffle_seed=7, include_details=True)
    )
    assert first.num_evaluated == 2 and first.usage.llm_calls == 2 and first.usage.cache_hits == 0
    assert first.num_correct == sum(r.correct for r in first.results)
    assert first.accuracy == first.num_correct / 2
    assert all(r.gold and not r.cached for r in first.results)
    assert first.usage.completion_tokens > 0

    again = llm_service.evaluate(EvaluationRequest("Answer with a number.", split="test", fidelity=2, shuffle_seed=7))
    assert (again.usage.llm_calls, again.usage.cache_hits, again.accuracy) == (0, 2, first.accuracy)

    extended = llm_service.evaluate(
        EvaluationRequest("Answer with a number.", split="test", fidelity=3, shuffle_seed=7, include_details=True)
    )
    assert (extended.usage.llm_calls, extended.usage.cache_hits) == (1, 2)
    assert [r.question_index for r in extended.results[:2]] == [r.question_index for r in first.results]


def test_few_shot_exemplars_by_id_and_inline(llm_service):
    by_id = llm_service.evaluate(
        EvaluationRequest("Answer.", split="test", fidelity=1, exemplar_ids=(3,), exemplar_pool="train[:100]")
    )
    assert by_id.usage.llm_calls == 1
    zero_shot = llm_service.evaluate(EvaluationRequest("Answer.", split="test", fidelity=1))
    assert zero_shot.prompt_hash != by_id.prompt_hash
    train = DatasetStore(DATASETS).load("gsm8k", "train")
    inline = (Exemplar(train[3].question, gsm8k.exemplar_answer(train[3].answer)),)
    again = llm_service.evaluate(EvaluationRequest("Answer.", split="test", fidelity=1, exemplars=inline))
    assert (again.usage.cache_hits, again.prompt_hash) == (1, by_id.prompt_hash)


def test_explicit_question_indices(llm_service):
    result = llm_service.evaluate(
        EvaluationRequest("Answer.", split="train", question_indices=(5, 9), include_details=True)
    )
    assert [r.question_index for r in result.results] == [5, 9]


def test_generate_one_completion_per_prompt(llm_service):
    result = llm_service.generate(
        ["Say hello.", "Name a colour."], DecodingParams(temperature=1.0, max_tokens=8, seed=3)
    )
    assert len(result.completions) == 2
    assert all(c.completion_tokens > 0 and c.text for c in result.completions)
    assert result.usage.llm_calls == 2 and result.model


def test_usage_accumulates(llm_service):
    before = llm_service.usage().usage.llm_calls
    llm_service.generate(["Say hi."], DecodingParams(max_tokens=4))
    assert llm_service.usage().usage.llm_calls == before + 1


def test_invalid_input(llm_service):
    with invalid_argument("fidelity 5000 exceeds"):
        llm_service.evaluate(EvaluationRequest("x", split="test", fidelity=5000))
    with invalid_argument("out of range"):
        llm_service.evaluate(EvaluationRequest("x", split="test", question_indices=(99999,)))
    with invalid_argument(r"exemplar_ids \[99999\] out of range"):
        llm_service.evaluate(
            EvaluationRequest("x", split="test", fidelity=1, exemplar_ids=(99999,), exemplar_pool="train")
        )
    with invalid_argument("exemplar_pool 'test' overlaps"):
        llm_service.evaluate(EvaluationRequest("x", split="test", fidelity=1, exemplar_ids=(1,), exemplar_pool="test"))
    with invalid_argument("prompts must not"):
        llm_service.generate([], DecodingParams())


@pytest.fixture(scope="module")
def second_model(llm_backend):
    """The embedded GGUF loaded again under another name with a shorter context: a real second model."""
    from services.common.shipped import ensure_model
    from services.llm_eval.backends import LlamaCppBackend

    return LlamaCppBackend(str(ensure_model()), "qwen-0.5b-ctx1024", n_ctx=1024)


@pytest.fixture(params=["inprocess", "grpc"])
def two_model_service(request, llm_backend, second_model, datasets_dir, tmp_path):
    from services.llm_eval.cache import AnswerCache
    from services.llm_eval.core import LlmEvaluator
    from services.llm_eval.datasets import DatasetStore
    from tests.contract.conftest import contract_subject, llm_eval_binding

    core = LlmEvaluator(
        llm_backend, llm_backend, DatasetStore(datasets_dir), AnswerCache(tmp_path / "a.sqlite"), extra=[second_model]
    )
    yield from contract_subject(request.param, core, llm_eval_binding, LlmEvalClient)


def test_generate_with_a_named_model(two_model_service, llm_backend):
    assert two_model_service.usage().models == sorted([llm_backend.model_name, "qwen-0.5b-ctx1024"])
    params = DecodingParams(max_tokens=4)
    assert two_model_service.generate(["Say hi."], params, model="qwen-0.5b-ctx1024").model == "qwen-0.5b-ctx1024"
    assert two_model_service.generate(["Say hi."], params).model == llm_backend.model_name
    with invalid_argument("model 'gpt-9' is not served here"):
        two_model_service.generate(["Say hi."], params, model="gpt-9")
