"""Prometheus metrics shared by every service (all named `promptopt_*`)."""

from __future__ import annotations

import sys

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

RPC_REQUESTS = Counter(
    "promptopt_rpc_requests_total",
    "gRPC requests handled, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "promptopt_rpc_latency_seconds",
    "gRPC handling latency (for streams: until the stream ends).",
    ["service", "method"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RUNS_ACTIVE = Gauge("promptopt_runs_active", "Runs (optimiser or tuning) executing in this process.")
RUNS_FINISHED = Counter(
    "promptopt_runs_finished_total", "Runs that reached a final state, by algorithm and state.", ["algorithm", "state"]
)


def _cuda():
    """torch.cuda once torch is imported and holds a CUDA context, else None. Never imports torch,
    and a torch another thread is still importing (no `cuda` attribute yet) counts as none."""
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except AttributeError:  # torch.cuda itself half-imported
        return None


class GpuMemoryCollector:
    """`promptopt_gpu_memory_*_bytes{device}` for every CUDA device this process has initialised.

    The families are always declared; they carry samples only once torch has a CUDA context in
    this process (CPU services and the embedded defaults export them empty). vLLM's engine runs
    in its own process, so for llm_eval the device-wide `used` figure is the one to watch.
    """

    def collect(self):
        reserved = GaugeMetricFamily(
            "promptopt_gpu_memory_reserved_bytes", "GPU memory held by this process's allocator.", labels=["device"]
        )
        used = GaugeMetricFamily(
            "promptopt_gpu_memory_used_bytes", "GPU memory in use on the device (all processes).", labels=["device"]
        )
        total = GaugeMetricFamily("promptopt_gpu_memory_total_bytes", "GPU memory on the device.", labels=["device"])
        cuda = _cuda()
        if cuda is not None:
            for index in range(cuda.device_count()):
                free, capacity = cuda.mem_get_info(index)
                reserved.add_metric([str(index)], cuda.memory_reserved(index))
                used.add_metric([str(index)], capacity - free)
                total.add_metric([str(index)], capacity)
        yield from (reserved, used, total)


REGISTRY.register(GpuMemoryCollector())

GPU_PEAK_KEY = "promptopt-gpu-peak-bytes"  # trailing metadata of every unary reply of a service on GPU


def gpu_peak_bytes() -> int | None:
    """This process's peak GPU memory (the torch allocator's high-water mark since start-up,
    summed over devices); None while it holds no CUDA context (CPU)."""
    cuda = _cuda()
    if cuda is None:
        return None
    return sum(cuda.max_memory_reserved(index) for index in range(cuda.device_count()))


def cap_gpu_memory(fraction: float) -> None:
    """Limit this process's torch allocator to `fraction` of each GPU (time-sliced GPUs); 0 = no cap."""
    if fraction <= 0:
        return
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(fraction, index)
