"""Property-based fuzzing (hypothesis) of every RPC of the six services, over real gRPC servers
wired as in production (the optimizer calls the others through their clients; llm_eval answers
with the replay backend so a valid evaluation is cheap).

For every request: the status is never INTERNAL or UNKNOWN (a handler that crashed); its handler
finishes within FINISH_SECONDS of the answer, also when the call ran past its deadline (long
work stops once its caller is gone); the server still answers health; a refused request leaves
the SQLite stores exactly as they were, and no stored row is ever lost. Runs a request starts
are cancelled at once. The RPC list comes from the proto descriptors, so a new RPC is fuzzed too.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from promptopt.decoder.v1 import decoder_pb2, decoder_pb2_grpc
from promptopt.encoder.v1 import encoder_pb2
from promptopt.llm_eval.v1 import llm_eval_pb2
from promptopt.optimizer.v1 import optimizer_pb2
from promptopt.surrogate.v1 import surrogate_pb2
from promptopt.tuner.v1 import tuner_pb2

from services.common.config import ClientConfig
from services.common.metrics import RPC_REQUESTS
from services.common.operations import RunState, RunStore
from services.common.server import ServiceBinding
from services.decoder.client import DecoderClient
from services.decoder.core import NearestTextInverter
from services.decoder.server import DecoderServicer
from services.encoder.client import EncoderClient
from services.llm_eval.client import LlmEvalClient
from services.optimizer.algorithms.lipo import ModelServices
from services.optimizer.server import optimizer_service
from services.surrogate.client import SurrogateClient
from services.surrogate.engine import SurrogateEngine
from services.tuner.__main__ import tuner_service
from tests.conftest import replay_evaluator, start_server
from tests.contract.conftest import encoder_binding, llm_eval_binding, surrogate_binding
from tests.contract.fuzz import messages

SERVICES = {
    "encoder": (encoder_pb2, "EncoderService"),
    "decoder": (decoder_pb2, "DecoderService"),
    "llm_eval": (llm_eval_pb2, "LlmEvalService"),
    "surrogate": (surrogate_pb2, "SurrogateService"),
    "optimizer": (optimizer_pb2, "OptimizerService"),
    "tuner": (tuner_pb2, "TunerService"),
}
METHODS = [
    (name, method)
    for name, (pb2, service) in SERVICES.items()
    for method in pb2.DESCRIPTOR.services_by_name[service].methods
]
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
CALL_TIMEOUT = 10.0  # valid requests may ask for long work (50000 epochs): it must stop at the deadline
FINISH_SECONDS = 30.0
OUTCOMES: Counter = Counter()  # (service, method, status) over the module, printed at the end


class Stack:
    """The six services on loopback, their stores, and one channel to each."""

    def __init__(self, root, embedder):
        self.stores = {
            "llm_eval": root / "answers.sqlite",
            "optimizer": root / "runs.sqlite",
            "tuner": root / "tuner.sqlite",
        }
        evaluator, instruction = replay_evaluator(root, self.stores["llm_eval"])
        engine = SurrogateEngine()
        points = np.random.default_rng(0).uniform(size=(8, 2))
        gp = engine.fit(points, points.sum(axis=1), owner="fuzz").model_id
        runs = {name: RunStore(self.stores[name]) for name in ("optimizer", "tuner")}
        finished = {name: store.create("opro", "fuzz", {}, 1).run_id for name, store in runs.items()}
        for name, store in runs.items():
            store.update(finished[name], state=RunState.SUCCEEDED)
        self.known = {
            "dataset": ("gsm8k",),
            "split": ("test", "train", "train[:10]", "test[:5]"),
            "test_split": ("test[:5]", "train[:10]"),
            "exemplar_pool": ("train[:10]",),
            "instruction": (instruction,),
            "prompts": (instruction, "Q: 1+1?\nA:"),
            "texts": ("Let's think step by step.", "Answer with a number."),
            "seed_texts": ("Solve the problem step by step.",),
            "model": ("replay",),
            "model_id": (gp, "gone"),
            "owner": ("fuzz",),
            "run_id": tuple(finished.values()),
            "tensor_widths": (2, 4, embedder.dimension),
        }
        self.servers = {
            "encoder": start_server(encoder_binding(embedder)),
            "decoder": start_server(
                ServiceBinding.of(
                    decoder_pb2,
                    "DecoderService",
                    decoder_pb2_grpc.add_DecoderServiceServicer_to_server,
                    DecoderServicer(NearestTextInverter(embedder.encode), embedder.dimension),
                )
            ),
            "llm_eval": start_server(llm_eval_binding(evaluator)),
            "surrogate": start_server(surrogate_binding(engine)),
            "tuner": start_server(tuner_service(runs["tuner"])),
        }

        def client(cls, name):
            return cls(ClientConfig(f"127.0.0.1:{self.servers[name].port}", retry_seconds=0))

        llm = client(LlmEvalClient, "llm_eval")
        models = ModelServices(
            client(EncoderClient, "encoder"), client(DecoderClient, "decoder"), client(SurrogateClient, "surrogate")
        )
        binding, self.manager = optimizer_service(runs["optimizer"], llm, models, root)
        self.servers["optimizer"] = start_server(binding)
        self.channels = {name: grpc.insecure_channel(f"127.0.0.1:{s.port}") for name, s in self.servers.items()}

    def rows(self, name: str) -> dict[tuple, tuple]:
        """(table, rowid) -> row, for every table of `name`'s store (empty for stateless services)."""
        path = self.stores.get(name)
        if path is None:
            return {}
        with sqlite3.connect(path) as db:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return {
                (table, rowid): row
                for table in tables
                for rowid, *row in db.execute(f"SELECT rowid, * FROM {table}")  # noqa: S608 - names from the schema
            }

    def close(self):
        for channel in self.channels.values():
            channel.close()
        for server in self.servers.values():
            server.server.stop(0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, embedder):
    s = Stack(tmp_path_factory.mktemp("fuzz"), embedder)
    yield s
    s.close()
    print("\nfuzzed requests by outcome:")
    for (name, method, code), n in sorted(OUTCOMES.items()):
        print(f"  {name}.{method} {code}: {n}")


def invoke(channel, method, request):
    """Call `method` generically: (status code, response or details); a stream is read to its end."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = message_factory.GetMessageClass(method.output_type)
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    call = kind(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString)
    try:
        result = call(request, timeout=CALL_TIMEOUT)
        if method.server_streaming:
            for _ in result:
                pass
        return grpc.StatusCode.OK, result
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def handled(service: str, method: str) -> float:
    """Calls of `method` whose handler has finished (the servers' own request counter)."""
    return sum(
        sample.value
        for metric in RPC_REQUESTS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and (sample.labels["service"], sample.labels["method"]) == (service, method)
    )


def settle_run(stack, method, response) -> None:
    """Cancel a run that a valid optimizer StartRun began, and wait for it to stop writing."""
    if method.name != "StartRun" or method.containing_service.name != "OptimizerService":
        return
    cancel = method.containing_service.methods_by_name["CancelRun"]
    code, details = invoke(
        stack.channels["optimizer"], cancel, optimizer_pb2.CancelRunRequest(run_id=response.run.run_id)
    )
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION), details  # it may have ended
    stack.manager.join(response.run.run_id, timeout=60)


@pytest.mark.parametrize(("name", "method"), METHODS, ids=[f"{n}.{m.name}" for n, m in METHODS])
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_fuzzed_requests_never_break_a_service_or_its_store(stack, name, method, data):
    request = data.draw(messages(method.input_type, stack.known), label="request")
    before = stack.rows(name)
    finished = handled(method.containing_service.full_name, method.name)
    code, result = invoke(stack.channels[name], method, request)
    OUTCOMES[name, method.name, code.name] += 1
    assert code not in BROKEN, f"{method.full_name} -> {code.name}: {result}"
    deadline = time.monotonic() + FINISH_SECONDS
    while handled(method.containing_service.full_name, method.name) <= finished:
        assert time.monotonic() < deadline, f"{method.full_name} ({code.name}) still working {FINISH_SECONDS:.0f} s on"
        time.sleep(0.05)
    if code == grpc.StatusCode.OK:
        settle_run(stack, method, result)
    after = stack.rows(name)
    assert before.keys() <= after.keys(), f"{method.name} lost stored rows"
    if code != grpc.StatusCode.OK:
        assert after == before, f"a refused {method.name} changed the {name} store"
    health = stack.channels[name].unary_unary("/grpc.health.v1.Health/Check")
    assert health(b"", timeout=10) == b"\x08\x01"  # HealthCheckResponse(status=SERVING)


def test_the_fuzzing_reached_the_work_behind_validation():
    """Runs after the fuzzing above: some fuzzed requests were valid, so the checks above also
    covered the services' real work, not only their validation."""
    accepted = {(name, method) for name, method, code in OUTCOMES if code == "OK"}
    for call in [
        ("encoder", "Encode"),
        ("decoder", "Invert"),
        ("llm_eval", "EvaluatePrompt"),
        ("surrogate", "TrainVae"),
        ("optimizer", "StartRun"),
    ]:
        assert call in accepted, f"no fuzzed {call} was valid: {sorted(OUTCOMES.items())}"
