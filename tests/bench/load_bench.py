"""Load on real gRPC servers: `python -m tests.bench.load_bench` (in `make test-reliability`).

N concurrent clients (threads with their own channels, no client retries) call, for a fixed
time each, the encoder's Encode (the embedded MiniLM, one short text per call) and a cached
EvaluatePrompt (llm_eval over the replay backend, 20 questions already answered). The servers
run with the service defaults (8 worker threads, at most 64 concurrent RPCs; beyond that gRPC
answers RESOURCE_EXHAUSTED). Prints throughput, p50/p99 latency of answered calls, the share
refused with RESOURCE_EXHAUSTED, any other error, and the process RSS (servers and clients
share it) before and after. Exits 1 on any error besides the cap, a refusal under the cap, or
RSS growing over 200 MB. Run it alone: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from services.common.config import ClientConfig, ServerConfig
from services.common.server import serve
from services.encoder.client import EncoderClient
from services.llm_eval.client import LlmEvalClient
from services.llm_eval.types import EvaluationRequest
from tests.conftest import replay_evaluator
from tests.contract.conftest import encoder_binding, llm_eval_binding


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hammer(make_client, call, clients: int, seconds: float) -> dict:
    latencies, codes, lock = [], Counter(), threading.Lock()
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients)

    def worker():
        with make_client() as client:
            barrier.wait()
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    call(client)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(codes.values())
    ordered = sorted(latencies) or [float("nan")]
    return {
        "calls/s": codes["OK"] / seconds,
        "p50 ms": 1000 * statistics.median(ordered),
        "p99 ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "exhausted %": 100 * codes["RESOURCE_EXHAUSTED"] / max(total, 1),
        "other errors": total - codes["OK"] - codes["RESOURCE_EXHAUSTED"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="1,8,32,64,128")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.clients.split(",")]
    from services.encoder.core import SentenceTransformerEmbedder

    evaluator, instruction = replay_evaluator(Path("state/bench/load"))
    request = EvaluationRequest(instruction, split="test", fidelity=20)
    evaluator.evaluate(request)  # every later call is a cache hit
    config = ServerConfig(port=0, metrics_port=-1)
    servers = {
        "Encode": serve(config, [encoder_binding(SentenceTransformerEmbedder())], install_signal_handlers=False),
        "EvaluatePrompt (cached)": serve(config, [llm_eval_binding(evaluator)], install_signal_handlers=False),
    }
    for name, running in servers.items():
        if not running.ready.wait(120):
            raise SystemExit(f"{name}: the server did not become ready in 120 s")
    calls = {
        "Encode": (EncoderClient, lambda c: c.encode(["Let's think step by step."])),
        "EvaluatePrompt (cached)": (LlmEvalClient, lambda c: c.evaluate(request)),
    }
    limits = f"{config.max_workers} workers, {config.max_concurrent_rpcs} RPCs max"
    print(f"{args.seconds:.0f} s per level; servers: {limits}")
    print(f"{'rpc':<24}{'clients':>8}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'exhausted %':>13}{'other errors':>14}")

    def connect(client_cls, name):
        return lambda: client_cls(ClientConfig(f"127.0.0.1:{servers[name].port}", retry_seconds=0))

    for name, (client_cls, call) in calls.items():
        hammer(connect(client_cls, name), call, 2, 1.0)  # warm up
    before, problems = rss_mb(), []
    for name, (client_cls, call) in calls.items():
        for clients in levels:
            row = hammer(connect(client_cls, name), call, clients, args.seconds)
            if row["other errors"]:
                problems.append(f"{name} at {clients} clients: {row['other errors']} errors besides the cap")
            if clients < config.max_concurrent_rpcs and row["exhausted %"]:
                problems.append(f"{name} at {clients} clients (under the cap): refused {row['exhausted %']:.1f}%")
            print(
                f"{name:<24}{clients:>8}{row['calls/s']:>10.1f}{row['p50 ms']:>9.1f}{row['p99 ms']:>9.1f}"
                f"{row['exhausted %']:>13.1f}{row['other errors']:>14}"
            )
    after = rss_mb()
    print(f"process RSS: {before:.0f} MB after warm-up, {after:.0f} MB after all levels ({after - before:+.0f} MB)")
    if after - before > 200:
        problems.append(f"RSS grew {after - before:.0f} MB under load (bound 200 MB)")
    for running in servers.values():
        running.server.stop(0)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
