"""The GPU memory behind a run: every unary reply of a service holding a CUDA context carries its
allocator's high-water mark in trailing metadata, clients keep the highest, and LIPO's report sums
them over the model services (the tuner's gpu_memory_peak). On CPU no reply carries it."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import grpc
import pytest

from services.common import metrics
from services.common import server as server_module
from services.common.channel import BaseClient
from services.common.server import ServiceBinding
from services.optimizer.algorithms.surrogate_backed import SurrogateBackedOptimizer
from tests.conftest import start_server


def echo_server():
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    generic = grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler})
    return start_server(ServiceBinding("test.Echo", lambda server: server.add_generic_rpc_handlers((generic,))))


def call(client: BaseClient) -> bytes:
    return client.channel.unary_unary("/test.Echo/Echo")(b"hi", timeout=5)


def test_clients_keep_the_highest_peak_a_service_reports_and_none_on_cpu(monkeypatch):
    running = echo_server()
    try:
        with BaseClient(f"127.0.0.1:{running.port}") as client:
            assert call(client) == b"hi" and client.gpu_peak.bytes is None  # CPU: no CUDA context, nothing said
            for peak in (3 << 30, 5 << 30, 4 << 30):  # the allocator's high-water marks a CUDA service would send
                monkeypatch.setattr(server_module, "gpu_peak_bytes", lambda peak=peak: peak)
                call(client)
            assert client.gpu_peak.bytes == 5 << 30
    finally:
        running.stop()


def test_a_torch_still_being_imported_by_another_thread_reads_as_no_gpu(monkeypatch):
    """The server asks after every reply; a half-imported torch (no `cuda` yet) must not fail it."""
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    assert metrics.gpu_peak_bytes() is None
    half = types.ModuleType("torch")
    half.cuda = types.ModuleType("torch.cuda")  # its own attributes not there yet
    monkeypatch.setitem(sys.modules, "torch", half)
    assert metrics.gpu_peak_bytes() is None


def test_a_runs_gpu_memory_peak_sums_its_services_peaks():
    def service(peak):
        return SimpleNamespace(gpu_peak=SimpleNamespace(bytes=peak))

    run = SimpleNamespace(
        models=SimpleNamespace(encoder=service(1 << 30), decoder=service(None), surrogate=service(2 << 30)),
        llm=SimpleNamespace(service=service(10 << 30)),  # vLLM's reservation is not the models' memory
    )
    assert SurrogateBackedOptimizer.gpu_memory_peak(run) == 3 << 30
    surrogate = run.models.surrogate
    surrogate.config = SimpleNamespace(address="surrogate:50054")
    run.models.flow = SimpleNamespace(gpu_peak=surrogate.gpu_peak, config=surrogate.config)  # the same process
    assert SurrogateBackedOptimizer.gpu_memory_peak(run) == 3 << 30
    run.models = SimpleNamespace(encoder=service(None), surrogate=object())  # on CPU, or in-process
    assert SurrogateBackedOptimizer.gpu_memory_peak(run) is None


@pytest.mark.gpu
def test_a_service_on_cuda_reports_its_allocators_peak():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    block = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # 256 MiB held by this process
    running = echo_server()
    try:
        with BaseClient(f"127.0.0.1:{running.port}") as client:
            call(client)
            assert client.gpu_peak.bytes >= block.numel()
    finally:
        running.stop()
