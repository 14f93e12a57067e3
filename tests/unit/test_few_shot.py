"""Few-shot EvaluatePrompt: exemplars by id from a pool split or inline, validated, in the cache key."""

import pytest

from services.llm_eval import gsm8k
from services.llm_eval.backends import LLMBackend
from services.llm_eval.cache import AnswerCache
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.types import Completion, EvaluationRequest, Exemplar


class RecordingBackend(LLMBackend):
    """Answers every prompt with '0' and keeps the prompts it saw."""

    model_name = "recording"

    def __init__(self):
        self.prompts: list[str] = []

    def identity(self) -> dict:
        return {"backend": "recording"}

    def generate(self, prompts, params):
        self.prompts += prompts
        return [Completion("0", 1, 1) for _ in prompts]


@pytest.fixture
def setup(datasets_dir, tmp_path):
    backend = RecordingBackend()
    store = DatasetStore(datasets_dir)
    return backend, store, LlmEvaluator(backend, backend, store, AnswerCache(tmp_path / "c.sqlite"))


def test_pool_exemplars_are_rendered_in_order_before_the_question(setup):
    backend, store, ev = setup
    train = store.load("gsm8k", "train")
    ev.evaluate(EvaluationRequest("Solve.", question_indices=(4,), exemplar_ids=(7, 2), exemplar_pool="train"))
    expected = gsm8k.format_prompt(
        store.load("gsm8k", "test")[4].question,
        "Solve.",
        [(train[i].question, gsm8k.exemplar_answer(train[i].answer)) for i in (7, 2)],
    )
    assert backend.prompts == [expected]


def test_the_exemplar_set_and_its_order_are_in_the_cache_key(setup):
    backend, _, ev = setup
    base = dict(instruction="Solve.", fidelity=3, shuffle_seed=1)
    pool = dict(exemplar_pool="train[:100]")
    first = ev.evaluate(EvaluationRequest(**base, exemplar_ids=(1, 2), **pool))
    assert ev.evaluate(EvaluationRequest(**base, exemplar_ids=(1, 2), **pool)).usage.cache_hits == 3
    for other in [dict(exemplar_ids=(2, 1), **pool), dict(exemplar_ids=(1,), **pool), {}]:
        result = ev.evaluate(EvaluationRequest(**base, **other))
        assert result.usage.llm_calls == 3 and result.prompt_hash != first.prompt_hash
    # inline exemplars equal to the pool's are the same prompt, so the same answers
    train = ev.datasets.load("gsm8k", "train")
    inline = tuple(Exemplar(train[i].question, gsm8k.exemplar_answer(train[i].answer)) for i in (1, 2))
    same = ev.evaluate(EvaluationRequest(**base, exemplars=inline))
    assert same.usage.cache_hits == 3 and same.prompt_hash == first.prompt_hash
    assert len(backend.prompts) == 3 + 9


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(exemplar_ids=(999999,), exemplar_pool="train"), r"exemplar_ids \[999999\] out of range"),
        (dict(exemplar_ids=(0,), exemplar_pool="test[:10]"), "exemplar_pool 'test\\[:10\\]' overlaps"),
        (dict(exemplar_ids=(0,), exemplar_pool="train[5:5]"), "exemplar_pool 'train\\[5:5\\]' is empty"),
        (dict(exemplar_ids=(0,), exemplar_pool="dev"), "exemplar_pool 'dev'"),
        (dict(exemplar_ids=(0,), exemplar_pool="train[:"), "exemplar_pool 'train\\[:' is not a split"),
    ],
)
def test_bad_exemplars_name_the_field(setup, fields, message):
    _, _, ev = setup
    with pytest.raises(ValueError, match=message):
        ev.evaluate(EvaluationRequest("Solve.", split="test[:20]", fidelity=1, **fields))


def test_request_level_exemplar_checks():
    with pytest.raises(ValueError, match="not both"):
        EvaluationRequest("x", exemplars=(Exemplar("q", "a"),), exemplar_ids=(1,), exemplar_pool="train")
    with pytest.raises(ValueError, match="exemplar_pool must name"):
        EvaluationRequest("x", exemplar_ids=(1,))
    with pytest.raises(ValueError, match="at most 32"):
        EvaluationRequest("x", exemplar_ids=tuple(range(33)), exemplar_pool="train")
    with pytest.raises(ValueError, match="non-empty question and answer"):
        Exemplar("q", " ")
