"""One operations contract: OperationsService serves the runs of every service its process hosts,
the per-service v1 RPCs stay as aliases answering the same, and which calls a client repeats
after a deadline comes from the protos' idempotency levels."""

from __future__ import annotations

import grpc
import pytest
from promptopt.flow.v1 import flow_pb2, flow_pb2_grpc
from promptopt.neuro.v1 import neuro_pb2, neuro_pb2_grpc
from promptopt.operations.v1 import operations_pb2, operations_pb2_grpc

from services.common.channel import safe_to_repeat
from services.common.operation_server import OperationServicer, operations_binding
from services.common.operations import RunManager, RunState, RunStore
from services.common.server import ServiceBinding
from tests.conftest import start_server


@pytest.fixture
def hosted(tmp_path):
    """A process hosting the flow and neuro services (as the surrogate's does), one finished run each."""
    stores = {name: RunStore(tmp_path / f"{name}.sqlite") for name in ("flow", "neuro")}
    managers = {name: RunManager(store, factory=None) for name, store in stores.items()}
    runs = {}
    for name, store in stores.items():
        runs[name] = store.create(name, f"a {name} run", {"epochs": 1}, 1).run_id
        store.append_event(runs[name], "progress", {"message": f"{name} epoch 1"}, store.get(runs[name]).usage)
        store.update(runs[name], state=RunState.SUCCEEDED, step=1)
    aliases = []
    for name, pb2, grpc_module, service in (
        ("flow", flow_pb2, flow_pb2_grpc, "FlowService"),
        ("neuro", neuro_pb2, neuro_pb2_grpc, "NeuroService"),
    ):  # the run RPCs of each service (its other RPCs answer UNIMPLEMENTED here)
        servicer_class = type("Runs", (OperationServicer, getattr(grpc_module, f"{service}Servicer")), {})
        servicer = servicer_class(pb2, stores[name], managers[name], parse=None)
        add = getattr(grpc_module, f"add_{service}Servicer_to_server")
        aliases.append(ServiceBinding.of(pb2, service, add, servicer))
    server = start_server(*aliases, operations_binding({n: (stores[n], managers[n]) for n in stores}))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield runs, channel
    channel.close()
    server.server.stop(0)


def test_one_operations_service_finds_each_hosted_services_runs(hosted):
    runs, channel = hosted
    operations = operations_pb2_grpc.OperationsServiceStub(channel)
    for name, run_id in runs.items():
        run = operations.GetRun(operations_pb2.GetRunRequest(run_id=run_id)).run
        assert (run.run_id, run.algorithm, run.state) == (run_id, name, operations_pb2.RUN_STATE_SUCCEEDED)
        events = list(operations.WatchRun(operations_pb2.WatchRunRequest(run_id=run_id)))
        assert [e.event.progress.message for e in events] == [f"{name} epoch 1"]
        listed = operations.ListRuns(operations_pb2.ListRunsRequest(service=name)).runs
        assert [r.run_id for r in listed] == [run_id]
    with pytest.raises(grpc.RpcError) as refused:
        operations.ListRuns(operations_pb2.ListRunsRequest())  # two hosted services: say which
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service must name one of ['flow', 'neuro']" in refused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        operations.GetRun(operations_pb2.GetRunRequest(run_id="flow-none"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_deprecated_per_service_rpcs_answer_as_operations_service_does(hosted):
    runs, channel = hosted
    operations = operations_pb2_grpc.OperationsServiceStub(channel)
    for name, pb2, stub in (
        ("flow", flow_pb2, flow_pb2_grpc.FlowServiceStub(channel)),
        ("neuro", neuro_pb2, neuro_pb2_grpc.NeuroServiceStub(channel)),
    ):
        alias = stub.GetRun(pb2.GetRunRequest(run_id=runs[name])).run
        assert alias == operations.GetRun(operations_pb2.GetRunRequest(run_id=runs[name])).run
        assert list(stub.ListRuns(pb2.ListRunsRequest()).runs) == [alias]
        (service,) = pb2.DESCRIPTOR.services_by_name.values()
        for method in ("WatchRun", "GetRun", "ListRuns", "CancelRun", "ResumeRun"):
            assert service.methods_by_name[method].GetOptions().deprecated, method
        assert not service.methods_by_name["StartRun"].GetOptions().deprecated


def test_cancel_resume_and_a_single_services_listing(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    manager = RunManager(store, factory=None)
    pending = store.create("opro", "", {}, 3).run_id
    done = store.create("opro", "", {}, 1).run_id
    store.update(done, state=RunState.SUCCEEDED)
    server = start_server(operations_binding({"optimizer": (store, manager)}))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        operations = operations_pb2_grpc.OperationsServiceStub(channel)
        listed = operations.ListRuns(operations_pb2.ListRunsRequest()).runs  # one hosted service: no name needed
        assert {r.run_id for r in listed} == {pending, done}
        operations.CancelRun(operations_pb2.CancelRunRequest(run_id=pending))
        assert store.get(pending).cancel_requested
        store.update(pending, state=RunState.CANCELLED)
        again = operations.CancelRun(operations_pb2.CancelRunRequest(run_id=pending)).run  # a retried cancel
        assert again.state == operations_pb2.RUN_STATE_CANCELLED
        for call, request in (
            (operations.CancelRun, operations_pb2.CancelRunRequest(run_id=done)),
            (operations.ResumeRun, operations_pb2.ResumeRunRequest(run_id=done)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call(request)
            assert (
                refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "SUCCEEDED" in refused.value.details()
            )
        with pytest.raises(grpc.RpcError) as bounded:
            operations.ListRuns(operations_pb2.ListRunsRequest(page_token="9" * 40))
        assert bounded.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in bounded.value.details()
    server.server.stop(0)


@pytest.mark.parametrize(
    ("method", "safe"),
    [
        ("/promptopt.llm_eval.v1.LlmEvalService/EvaluatePrompt", True),  # answers are cached as they come
        ("/promptopt.llm_eval.v1.LlmEvalService/Generate", False),  # sampled: a repeat pays again
        ("/promptopt.operations.v1.OperationsService/GetRun", True),
        ("/promptopt.operations.v1.OperationsService/CancelRun", True),
        ("/promptopt.operations.v1.OperationsService/ResumeRun", False),
        ("/promptopt.optimizer.v1.OptimizerService/StartRun", False),
        ("/promptopt.surrogate.v1.SurrogateService/Predict", True),
        ("/promptopt.surrogate.v1.SurrogateService/FitModel", False),
        ("/grpc.health.v1.Health/Check", True),
        ("/promptopt.nothing.v1.Nothing/Get", False),
    ],
)
def test_calls_repeated_after_a_deadline_are_those_the_protos_declare_safe(method, safe):
    import promptopt.llm_eval.v1.llm_eval_pb2  # noqa: F401 - registers the services' descriptors
    import promptopt.optimizer.v1.optimizer_pb2  # noqa: F401
    import promptopt.surrogate.v1.surrogate_pb2  # noqa: F401

    assert safe_to_repeat(method) is safe


def test_64_open_watchers_leave_health_and_getrun_answering_and_one_more_stream_is_refused(tmp_path):
    """Streams hold a thread each, apart from the threads unary calls answer on (ServerConfig's
    max_streams): 64 watchers of a running run, then health and GetRun still answer within 1 s."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    store = RunStore(tmp_path / "flow.sqlite")
    run_id = store.create("flow", "a long run", {"epochs": 1}, 1).run_id
    store.append_event(run_id, "progress", {"message": "epoch 1"}, store.get(run_id).usage)
    store.update(run_id, state=RunState.RUNNING)
    server = start_server(operations_binding({"flow": (store, RunManager(store, factory=None))}, poll_seconds=0.2))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    operations = operations_pb2_grpc.OperationsServiceStub(channel)
    watch = operations_pb2.WatchRunRequest(run_id=run_id)
    watchers = [operations.WatchRun(watch, timeout=60) for _ in range(64)]
    try:
        assert all(next(w).event.progress.message == "epoch 1" for w in watchers)  # every stream is open
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        run = operations.GetRun(operations_pb2.GetRunRequest(run_id=run_id), timeout=1).run
        assert run.state == operations_pb2.RUN_STATE_RUNNING
        with pytest.raises(grpc.RpcError) as refused:
            next(operations.WatchRun(watch, timeout=5))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "64 streams are open on this service (its max_streams)" in refused.value.details()
    finally:
        for w in watchers:
            w.cancel()
    store.update(run_id, state=RunState.SUCCEEDED)
    assert [e.event.progress.message for e in operations.WatchRun(watch, timeout=10)] == ["epoch 1"]  # freed
    channel.close()
    server.server.stop(0)
