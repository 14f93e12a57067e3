"""Riding out faults on real loopback gRPC servers: client retries with backoff, chunked
evaluations with progress, an abandoned evaluation stopped inside llm_eval, failed runs resumed."""

from __future__ import annotations

import time

import grpc
import pytest

from services.common.channel import make_channel
from services.common.config import ClientConfig
from services.common.errors import FailedPreconditionError, describe
from services.common.operations import RunManager, RunState, RunStore
from services.common.server import ServiceBinding
from services.common.types import Usage
from services.llm_eval.cache import AnswerCache
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_results, load_table
from services.llm_eval.types import EvaluationRequest
from services.optimizer.algorithms.base import Chunking, MeteredLlm
from tests.conftest import start_server
from tests.contract.conftest import llm_eval_binding


class FlakyServer:
    """A generic gRPC server whose methods fail with `codes` (in order) before answering b'ok'."""

    def __init__(self, codes, delay: float = 0.0):
        self.codes, self.delay, self.attempts = list(codes), delay, 0
        handler = grpc.unary_unary_rpc_method_handler(self._handle)
        generic = grpc.method_handlers_generic_handler("test.Flaky", {"Echo": handler, "StartRun": handler})
        binding = ServiceBinding("test.Flaky", lambda server: server.add_generic_rpc_handlers((generic,)))
        self.running = start_server(binding)

    def _handle(self, request, context):
        self.attempts += 1
        if self.codes:
            code = self.codes.pop(0)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                time.sleep(self.delay)
            else:
                context.abort(code, f"injected {code.name}")
        return b"ok"

    def call(self, method: str, retry_seconds: float, timeout: float = 5.0):
        channel = make_channel(ClientConfig(f"127.0.0.1:{self.running.port}", retry_seconds=retry_seconds))
        try:
            return channel.unary_unary(f"/test.Flaky/{method}")(b"hi", timeout=timeout)
        finally:
            channel.close()


@pytest.fixture
def flaky():
    servers = []

    def make(codes, delay=0.0):
        servers.append(FlakyServer(codes, delay))
        return servers[-1]

    yield make
    for server in servers:
        server.running.server.stop(0)


def test_transient_failures_are_retried_until_the_call_succeeds(flaky):
    server = flaky([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE])
    started = time.monotonic()
    assert server.call("Echo", retry_seconds=30) == b"ok"
    assert server.attempts == 4
    assert time.monotonic() - started >= 0.75 * (0.5 + 1 + 2)  # exponential backoff between attempts


def test_permanent_errors_and_spent_budgets_are_not_retried(flaky):
    server = flaky([grpc.StatusCode.INVALID_ARGUMENT])
    with pytest.raises(grpc.RpcError) as err:
        server.call("Echo", retry_seconds=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and server.attempts == 1
    server = flaky([grpc.StatusCode.UNAVAILABLE] * 50)
    with pytest.raises(grpc.RpcError) as err:
        server.call("Echo", retry_seconds=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and 2 <= server.attempts <= 4
    server = flaky([grpc.StatusCode.UNAVAILABLE])
    with pytest.raises(grpc.RpcError):
        server.call("Echo", retry_seconds=0)  # retries off
    assert server.attempts == 1


def test_a_missed_deadline_is_retried_except_where_the_call_starts_something(flaky):
    server = flaky([grpc.StatusCode.DEADLINE_EXCEEDED], delay=0.5)
    assert server.call("Echo", retry_seconds=30, timeout=0.2) == b"ok"
    assert server.attempts == 2
    server = flaky([grpc.StatusCode.DEADLINE_EXCEEDED], delay=0.5)
    with pytest.raises(grpc.RpcError) as err:
        server.call("StartRun", retry_seconds=30, timeout=0.2)  # a late StartRun may have started the run
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and server.attempts == 1
    assert describe(err.value) == "DEADLINE_EXCEEDED: Deadline Exceeded"  # one line for the run's error


class SlowReplay(ReplayBackend):
    """The replay backend answering one prompt at a time, `seconds` each, counting its answers."""

    max_batch = 1

    def __init__(self, *args, seconds: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds, self.answered = seconds, 0

    def generate(self, prompts, params):
        time.sleep(self.seconds * len(prompts))
        self.answered += len(prompts)
        return super().generate(prompts, params)


@pytest.fixture
def replay_server(datasets_dir, tmp_path):
    path = tmp_path / "table.jsonl"
    convert_results(datasets_dir / "prompts" / "gsm8k_100_instructions_qwen2.5-7b.json", path)
    table = load_table(path)
    store = DatasetStore(datasets_dir)
    servers = []

    def make(seconds=0.0):
        backend = SlowReplay(table, store.load("gsm8k", "test"), seconds=seconds)
        evaluator = LlmEvaluator(backend, backend, store, AnswerCache(tmp_path / "answers.sqlite"), batch_size=512)
        servers.append(start_server(llm_eval_binding(evaluator)))
        return backend, f"127.0.0.1:{servers[-1].port}", next(iter(table))[0]

    yield make
    for server in servers:
        server.server.stop(0)


def test_chunked_evaluation_equals_one_call_and_reports_progress(replay_server):
    _, address, instruction = replay_server()
    request = EvaluationRequest(instruction, split="test", fidelity=300, shuffle_seed=5, include_details=True)
    with LlmEvalClient(address) as client:
        progress, usage = [], Usage()
        chunked = MeteredLlm(client, usage, chunking=Chunking(first=16), on_progress=lambda *p: progress.append(p))
        result = chunked.evaluate(request)
        assert progress[0] == (16, 300) and progress[-1] == (300, 300) and len(progress) >= 3
        assert all(a[0] < b[0] for a, b in zip(progress, progress[1:], strict=False))
        assert (result.num_evaluated, result.usage.llm_calls, result.usage.cache_hits) == (300, 300, 0)
        assert usage == result.usage  # earlier chunks' answers are not counted as cache hits
        again = MeteredLlm(client, Usage()).evaluate(request)  # one call: every answer was cached
        assert (again.usage.llm_calls, again.usage.cache_hits) == (0, 300)
        assert again.num_correct == result.num_correct
        assert [r.question_index for r in again.results] == [r.question_index for r in result.results]
        picked = EvaluationRequest(instruction, split="test", question_indices=tuple(range(500, 540)))
        progress.clear()
        part = chunked.evaluate(picked)
        seen = len({r.question_index for r in result.results} & set(range(500, 540)))
        assert progress[-1] == (40, 40) and part.num_evaluated == 40
        assert (part.usage.llm_calls, part.usage.cache_hits) == (40 - seen, seen)


def test_chunk_sizes_follow_the_measured_rate():
    chunking = Chunking(first=16, target_seconds=30, max_growth=4)
    assert chunking.next_size(16, 1.0) == 64  # fast: grows, at most 4x
    assert chunking.next_size(64, 60.0) == 32  # slow: shrinks toward 30 s
    assert chunking.next_size(64, 1000.0) == 16  # never below the first chunk
    with pytest.raises(ValueError, match="chunking first must be >= 1"):
        Chunking(first=0)


def test_an_abandoned_evaluation_stops_in_llm_eval_and_its_answers_are_kept(replay_server):
    backend, address, instruction = replay_server(seconds=0.02)
    request = EvaluationRequest(instruction, split="test", fidelity=400)
    with LlmEvalClient(ClientConfig(address, retry_seconds=0, timeout_seconds=1.0)) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.evaluate(request)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.5)
        stopped_at = backend.answered
        time.sleep(1.0)
        assert backend.answered == stopped_at < 200  # nobody is computing for the caller that left
    with LlmEvalClient(address) as client:  # the retry pays only what the abandoned call had not answered
        result = client.evaluate(request)
        assert result.usage.cache_hits == stopped_at and result.usage.llm_calls == 400 - stopped_at


class FailOnce:
    """A two-step job whose second step fails the first time it runs."""

    runs: dict[int, int] = {}

    def __init__(self, *args):
        pass

    def initial_state(self):
        return {"step": 0}

    def total_steps(self):
        return 2

    def step(self, state):
        FailOnce.runs[state["step"]] = FailOnce.runs.get(state["step"], 0) + 1
        if state["step"] == 1 and FailOnce.runs[1] == 1:
            raise grpc.RpcError()  # an RpcError without a status: described by its type
        return {"step": state["step"] + 1}

    def best(self, state):
        return "p", float(state["step"])

    def report(self, state):
        return {}

    def result(self, state):
        return {}

    def release(self):
        pass


def test_a_failed_run_resumes_from_its_checkpoint(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    manager = RunManager(store, FailOnce)
    record = store.create("fail-once", "", {}, 2)
    manager.start(record.run_id)
    manager.join(record.run_id, 10)
    failed = store.get(record.run_id)
    assert failed.state == RunState.FAILED and failed.step == 1 and failed.error == "RpcError: "
    with pytest.raises(FailedPreconditionError):
        manager.cancel(record.run_id)
    resumed = manager.resume(record.run_id)
    assert resumed.state in (RunState.PENDING, RunState.RUNNING, RunState.SUCCEEDED) and resumed.error == ""
    manager.join(record.run_id, 10)
    done = store.get(record.run_id)
    assert done.state == RunState.SUCCEEDED and FailOnce.runs == {0: 1, 1: 2}  # step 0 never ran again
    with pytest.raises(FailedPreconditionError, match="only FAILED or CANCELLED runs resume"):
        manager.resume(record.run_id)
    messages = [e.payload.get("message", "") for e in store.events(record.run_id, 0)]
    assert "resume requested after FAILED" in messages and "resumed at step 1/2" in messages
