import dataclasses
import json
import shutil

import pytest

from services.common.config import REPOSITORY_DATASETS
from services.common.errors import NotFoundError
from services.common.operations import RunState, RunStore
from services.common.types import Usage
from services.llm_eval.cache import AnswerCache, AnswerContext, CachedAnswer, answer_key, prompt_hash
from services.llm_eval.datasets import main as datasets_main
from services.llm_eval.datasets import verify
from services.llm_eval.types import DecodingParams


def test_answer_key_changes_with_every_component():
    context = AnswerContext(
        {"backend": "llamacpp", "n_ctx": 2048},
        "Q: {question}\n{instruction}\nA:",
        "gsm8k",
        "d0",
        "test",
        DecodingParams(),
    )
    base = answer_key(context.digest(), prompt_hash("x"), 1)
    assert base == answer_key(dataclasses.replace(context).digest(), prompt_hash("x"), 1)
    contexts = [
        dataclasses.replace(context, backend={"backend": "llamacpp", "n_ctx": 4096}),
        dataclasses.replace(context, backend={"backend": "replay", "seed": 1}),
        dataclasses.replace(context, template="{instruction}\nQ: {question}\nA:"),
        dataclasses.replace(context, dataset="other"),
        dataclasses.replace(context, dataset_digest="d1"),
        dataclasses.replace(context, split="train"),
        dataclasses.replace(context, params=DecodingParams(max_tokens=5)),
        dataclasses.replace(context, params=DecodingParams(temperature=0.5)),
    ]
    variants = [answer_key(c.digest(), prompt_hash("x"), 1) for c in contexts]
    variants += [answer_key(context.digest(), prompt_hash("y"), 1), answer_key(context.digest(), prompt_hash("x"), 2)]
    assert len({base, *variants}) == 11


def test_llamacpp_identity_names_weights_context_and_chat_template(llm_backend):
    from services.common.shipped import QWEN25_CODER_05B
    from services.llm_eval.backends import LlamaCppBackend

    other = LlamaCppBackend.embedded(n_ctx=1024)
    a, b = llm_backend.identity(), other.identity()
    assert a["weights_sha256"] == b["weights_sha256"] == QWEN25_CODER_05B.sha256
    assert (a["n_ctx"], b["n_ctx"]) == (2048, 1024)
    assert len(a["chat_template_sha256"]) == 64 and a["chat_template_sha256"] == b["chat_template_sha256"]
    params = DecodingParams()
    keys = {AnswerContext(i, "t", "gsm8k", "d", "test", params).digest() for i in (a, b)}
    assert len(keys) == 2


def test_answer_cache_persists(tmp_path):
    cache = AnswerCache(tmp_path / "c.sqlite")
    cache.put("k1", ("m", "h", "d", "s", 0, "{}"), CachedAnswer("42", 3, 4))
    cache.close()
    reopened = AnswerCache(tmp_path / "c.sqlite")
    assert reopened.get_many(["k1", "k2"]) == {"k1": CachedAnswer("42", 3, 4)}
    assert reopened.count() == 1


def test_run_store_events_and_checkpoints(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run = store.create("opro", "demo", {"a": 1}, 3)
    assert run.state == RunState.PENDING and run.last_sequence == 0
    assert store.append_event(run.run_id, "progress", {"message": "x"}, Usage(llm_calls=2)) == 1
    assert store.append_event(run.run_id, "candidate", {"prompt": "p", "score": 0.5}, Usage(llm_calls=3)) == 2
    store.update(run.run_id, state=RunState.RUNNING, checkpoint={"step": 1}, usage=Usage(llm_calls=3))
    reopened = RunStore(tmp_path / "runs.sqlite")
    got = reopened.get(run.run_id)
    assert (got.checkpoint, got.usage.llm_calls, got.last_sequence) == ({"step": 1}, 3, 2)
    assert [e.sequence for e in reopened.events(run.run_id, 1)] == [2]
    assert [r.run_id for r in reopened.unfinished()] == [run.run_id]
    with pytest.raises(NotFoundError):
        reopened.get("nope")


def test_concurrent_evaluations_of_the_same_prompt_pay_once(tmp_path, datasets_dir):
    """A resumed run re-asking while the killed run's request still computes must not pay twice."""
    import threading
    import time

    from services.llm_eval.backends import LLMBackend
    from services.llm_eval.core import LlmEvaluator
    from services.llm_eval.datasets import DatasetStore
    from services.llm_eval.types import Completion, EvaluationRequest

    class SlowCountingBackend(LLMBackend):
        model_name = "slow-counter"

        def __init__(self):
            self.prompts = []

        def identity(self):
            return {"backend": "slow-counter"}

        def generate(self, prompts, params):
            self.prompts += prompts
            time.sleep(0.3)
            return [Completion("The answer is 0.", 5, 5) for _ in prompts]

    backend = SlowCountingBackend()
    evaluator = LlmEvaluator(
        backend, backend, DatasetStore(datasets_dir), AnswerCache(tmp_path / "a.sqlite"), 32, batch_size=2
    )
    request = EvaluationRequest(instruction="Solve it.", dataset="gsm8k", split="test", fidelity=5)
    results = [None, None]

    def run(slot):
        results[slot] = evaluator.evaluate(request)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(backend.prompts) == 5 == len(set(backend.prompts))
    assert sum(r.usage.llm_calls for r in results) == 5
    assert sum(r.usage.cache_hits for r in results) == 5


def test_committed_datasets_match_their_registry(tmp_path):
    root = REPOSITORY_DATASETS
    assert verify(root) == []
    registry = json.loads((root / "registry.json").read_text())
    assert {"gsm8k", "hbbops_dev", "prompts"} <= set(registry)
    assert all(entry["licence"] and entry["source"] for entry in registry.values())
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "hbbops_dev" / "grid.jsonl").write_text("{}\n")
    (copy / "gsm8k" / "LICENSE").unlink()
    assert sorted(verify(copy)) == [
        "gsm8k: gsm8k/LICENSE is missing",
        "hbbops_dev: hbbops_dev/grid.jsonl does not match its sha256 in registry.json",
    ]
    assert datasets_main(["verify", str(copy)]) == 1
