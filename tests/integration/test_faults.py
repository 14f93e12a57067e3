"""Riding out faults on real loopback gRPC servers: client retries with backoff, chunked
evaluations with progress, an abandoned evaluation stopped inside llm_eval, failed runs resumed."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from promptopt.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc

from services.common.channel import make_channel
from services.common.config import ClientConfig, ServerConfig
from services.common.errors import CallerGoneError, FailedPreconditionError, UnavailableError, describe, status_for
from services.common.operation_server import OperationServicer, operations_binding
from services.common.operations import Cancelled, RunManager, RunState, RunStore
from services.common.server import ServiceBinding, serve
from services.common.types import Usage
from services.llm_eval.backends import LlamaCppBackend, OpenAIBackend
from services.llm_eval.cache import AnswerCache
from services.llm_eval.client import Chunking, LlmEvalClient, MeteredLlm
from services.llm_eval.core import LlmEvaluator
from services.llm_eval.datasets import DatasetStore
from services.llm_eval.replay import ReplayBackend, convert_results, load_table
from services.llm_eval.types import DecodingParams, EvaluationRequest
from services.optimizer.client import OptimizerClient
from tests.conftest import start_server
from tests.contract.conftest import llm_eval_binding

# the real RPCs' paths, so the client's retry policy reads their protos' idempotency levels
FLAKY_PATHS = {
    "EvaluatePrompt": "/promptopt.llm_eval.v1.LlmEvalService/EvaluatePrompt",
    "StartRun": "/promptopt.optimizer.v1.OptimizerService/StartRun",
}


class FlakyServer:
    """A generic gRPC server whose EvaluatePrompt and StartRun fail with `codes` (in order) before
    answering b'ok'."""

    def __init__(self, codes, delay: float = 0.0):
        self.codes, self.delay, self.attempts = list(codes), delay, 0
        handler = grpc.unary_unary_rpc_method_handler(self._handle)
        bindings = []
        for method, path in FLAKY_PATHS.items():
            service = path.split("/")[1]
            generic = grpc.method_handlers_generic_handler(service, {method: handler})
            bindings.append(ServiceBinding(service, lambda server, g=generic: server.add_generic_rpc_handlers((g,))))
        self.running = start_server(*bindings)

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
            return channel.unary_unary(FLAKY_PATHS[method])(b"hi", timeout=timeout)
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
    assert server.call("EvaluatePrompt", retry_seconds=30) == b"ok"
    assert server.attempts == 4
    assert time.monotonic() - started >= 0.75 * (0.5 + 1 + 2)  # exponential backoff between attempts


def test_permanent_errors_and_spent_budgets_are_not_retried(flaky):
    server = flaky([grpc.StatusCode.INVALID_ARGUMENT])
    with pytest.raises(grpc.RpcError) as err:
        server.call("EvaluatePrompt", retry_seconds=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and server.attempts == 1
    server = flaky([grpc.StatusCode.UNAVAILABLE] * 50)
    with pytest.raises(grpc.RpcError) as err:
        server.call("EvaluatePrompt", retry_seconds=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and 2 <= server.attempts <= 4
    server = flaky([grpc.StatusCode.UNAVAILABLE])
    with pytest.raises(grpc.RpcError):
        server.call("EvaluatePrompt", retry_seconds=0)  # retries off
    assert server.attempts == 1


def test_a_missed_deadline_is_retried_except_where_the_call_starts_something(flaky):
    server = flaky([grpc.StatusCode.DEADLINE_EXCEEDED], delay=0.5)
    assert server.call("EvaluatePrompt", retry_seconds=30, timeout=0.2) == b"ok"
    assert server.attempts == 2
    server = flaky([grpc.StatusCode.DEADLINE_EXCEEDED], delay=0.5)
    with pytest.raises(grpc.RpcError) as err:
        server.call("StartRun", retry_seconds=30, timeout=0.2)  # a late StartRun may have started the run
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and server.attempts == 1
    assert describe(err.value) == "DEADLINE_EXCEEDED: Deadline Exceeded"  # one line for the run's error
    # the budget runs from the first failure, so an attempt longer than the budget is still retried
    server = flaky([grpc.StatusCode.DEADLINE_EXCEEDED], delay=1.0)
    assert server.call("EvaluatePrompt", retry_seconds=0.7, timeout=0.6) == b"ok" and server.attempts == 2


def test_a_message_over_the_size_limit_is_not_retried(flaky):
    server = flaky([])
    channel = make_channel(ClientConfig(f"127.0.0.1:{server.running.port}", max_message_mb=1, retry_seconds=30))
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(FLAKY_PATHS["EvaluatePrompt"])(b"x" * (2 * 1024 * 1024), timeout=5)
    channel.close()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and server.attempts == 0


class SlowReplay(ReplayBackend):
    """The replay backend answering one prompt at a time, `seconds` each, counting its answers."""

    max_batch = 1

    def __init__(self, *args, seconds: float = 0.0, fail_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds, self.fail_after, self.answered = seconds, fail_after, 0

    def generate(self, prompts, params):
        if self.fail_after is not None and self.answered >= self.fail_after:
            raise UnavailableError("backend went down")
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

    def make(seconds=0.0, fail_after=None):
        backend = SlowReplay(table, store.load("gsm8k", "test"), seconds=seconds, fail_after=fail_after)
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


def test_a_cancelled_run_stops_between_chunks(replay_server):
    _, address, instruction = replay_server()
    cancelled, progress = [], []

    def on_progress(done, total):
        progress.append(done)
        cancelled.append(True)

    with LlmEvalClient(address) as client:
        llm = MeteredLlm(client, Usage(), lambda: bool(cancelled), chunking=Chunking(first=16), on_progress=on_progress)
        with pytest.raises(Cancelled):
            llm.evaluate(EvaluationRequest(instruction, split="test", fidelity=200))
    assert progress == [16] and llm.usage.llm_calls == 16
    with pytest.raises(ValueError, match="fidelity 2000 exceeds the 1319 questions"):  # before any chunk is paid
        MeteredLlm(LlmEvalClient(address), Usage(), chunking=Chunking()).evaluate(
            EvaluationRequest(instruction, split="test", fidelity=2000)
        )


def test_a_backend_failure_midway_keeps_and_counts_what_was_answered(replay_server):
    backend, address, instruction = replay_server(fail_after=5)
    with LlmEvalClient(ClientConfig(address, retry_seconds=0)) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.evaluate(EvaluationRequest(instruction, split="test", fidelity=20))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        report = client.usage()
    assert report.usage.llm_calls == report.cached_answers == backend.answered == 5


def test_sequential_backends_answer_one_prompt_per_batch():
    """So llm_eval caches each answer, and notices a caller that left, after every prompt."""
    assert LlamaCppBackend.max_batch == OpenAIBackend.max_batch == 1 and ReplayBackend.max_batch is None
    assert status_for(CallerGoneError("gone")) == grpc.StatusCode.CANCELLED


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


def test_an_abandoned_training_stops_in_the_surrogate():
    """A VAE asked for a million epochs, whose caller's deadline passes after 2 s, stops within
    a few seconds (the handler ends CANCELLED) instead of training for nobody."""
    from promptopt.surrogate.v1 import surrogate_pb2, surrogate_pb2_grpc

    from services.common.codec import encode_tensor
    from services.common.metrics import RPC_REQUESTS
    from services.surrogate.engine import SurrogateEngine
    from tests.contract.conftest import surrogate_binding

    def cancelled() -> float:
        labels = ("promptopt.surrogate.v1.SurrogateService", "TrainVae", "CANCELLED")
        return RPC_REQUESTS.labels(*labels)._value.get()

    server = start_server(surrogate_binding(SurrogateEngine()))
    before = cancelled()
    settings = surrogate_pb2.VaeSettings(epochs=1_000_000, patience=1_000_000, batch_size=4)
    embeddings = encode_tensor(np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stub = surrogate_pb2_grpc.SurrogateServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.TrainVae(surrogate_pb2.TrainVaeRequest(embeddings=embeddings, settings=settings), timeout=2.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        while cancelled() == before:
            assert time.monotonic() - started < 10, "the surrogate kept training after its caller left"
            time.sleep(0.05)
    finally:
        channel.close()
        server.server.stop(0)


class FailOnce:
    """A two-step job whose second step fails the first time it runs; `release` takes `RELEASE` s."""

    runs: dict[int, int] = {}
    RELEASE = 0.0

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
        time.sleep(FailOnce.RELEASE)


@pytest.fixture
def fail_once(tmp_path):
    FailOnce.runs, FailOnce.RELEASE = {}, 0.0
    store = RunStore(tmp_path / "runs.sqlite")
    return store, RunManager(store, FailOnce), store.create("fail-once", "", {}, 2).run_id


def wait_state(store, run_id, states, timeout=10.0):
    deadline = time.monotonic() + timeout
    while store.get(run_id).state not in states:
        assert time.monotonic() < deadline, store.get(run_id)
        time.sleep(0.01)


def test_a_failed_run_resumes_from_its_checkpoint(fail_once):
    store, manager, run_id = fail_once
    manager.start(run_id)
    manager.join(run_id, 10)
    failed = store.get(run_id)
    assert failed.state == RunState.FAILED and failed.step == 1 and failed.error == "RpcError:"
    with pytest.raises(FailedPreconditionError):
        manager.cancel(run_id)
    resumed = manager.resume(run_id)
    assert resumed.state == RunState.PENDING and resumed.error == ""
    manager.join(run_id, 10)
    assert store.get(run_id).state == RunState.SUCCEEDED and FailOnce.runs == {0: 1, 1: 2}  # step 0 ran once
    with pytest.raises(FailedPreconditionError, match="only FAILED or CANCELLED runs resume"):
        manager.resume(run_id)
    messages = [e.payload.get("message", "") for e in store.events(run_id, 0)]
    assert "resume requested after FAILED" in messages and "resumed at step 1/2" in messages


def test_resume_waits_for_the_failed_thread_and_only_one_of_two_wins(fail_once):
    store, manager, run_id = fail_once
    FailOnce.RELEASE = 1.0  # the run is FAILED in the store while its thread still releases
    manager.start(run_id)
    wait_state(store, run_id, {RunState.FAILED})
    outcomes = []

    def resume():
        try:
            outcomes.append(manager.resume(run_id).state)
        except FailedPreconditionError:
            outcomes.append("refused")

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(map(str, outcomes)) == sorted([str(RunState.PENDING), "refused"])
    wait_state(store, run_id, {RunState.SUCCEEDED})
    assert FailOnce.runs == {0: 1, 1: 2}


def test_watch_reopens_a_stream_broken_by_a_restart_after_a_quiet_spell(tmp_path):
    """The optimizer restarts while a step has been quiet longer than the client's retry budget."""
    store = RunStore(tmp_path / "runs.sqlite")

    class Quiet(FailOnce):
        def step(self, state):
            time.sleep(3.0 if state["step"] == 1 else 0.0)
            return {"step": state["step"] + 1}

    manager = RunManager(store, Quiet)
    servicer = OperationServicer(optimizer_pb2, store, manager, parse=None, poll_seconds=0.05)
    binding = ServiceBinding.of(
        optimizer_pb2, "OptimizerService", optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server, servicer
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServerConfig(port=port, metrics_port=-1)
    bindings = [binding, operations_binding({"optimizer": (store, manager)}, poll_seconds=0.05)]
    first = serve(config, bindings, install_signal_handlers=False)
    run_id = store.create("quiet", "", {}, 2).run_id
    manager.start(run_id)
    seen = []
    with OptimizerClient(ClientConfig(f"127.0.0.1:{port}", retry_seconds=2)) as client:
        for event in client.watch(run_id):
            seen.append(event.sequence)
            if len(seen) == 1:  # the step-1 sleep has begun; the stream goes quiet, then breaks
                time.sleep(2.5)
                first.server.stop(0)
                time.sleep(0.3)
                second = serve(config, bindings, install_signal_handlers=False)
    second.server.stop(0)
    assert seen == list(range(1, store.get(run_id).last_sequence + 1))  # every event once, in order
    assert store.get(run_id).state == RunState.SUCCEEDED


def test_openai_http_errors_map_to_retryable_or_not():
    """429 is overload (retried), 5xx a server down (retried), any other 4xx a refused request."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(int(self.path.split("/")[1]))  # /<status>/chat/completions
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for code, status in ((429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (400, "FAILED_PRECONDITION")):
            backend = OpenAIBackend(f"http://127.0.0.1:{httpd.server_port}/{code}", "m", timeout=5)
            with pytest.raises(Exception) as err:
                backend.generate(["hi"], DecodingParams())
            assert status_for(err.value).name == status and f"HTTP {code}" in str(err.value)
    finally:
        httpd.shutdown()
