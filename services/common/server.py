"""Server bootstrap shared by every service.

`serve()` starts a gRPC server with: grpc.health.v1 health (NOT_SERVING until the
service's `load` finishes, NOT_SERVING again while draining), server reflection, a
Prometheus `/metrics` HTTP port, message-size limits, a concurrency cap
(RESOURCE_EXHAUSTED beyond it), streams capped apart from unary calls (open watchers never take
the threads that health and GetRun answer on), optional TLS/mTLS and bearer-token auth, mapping of
domain exceptions to status codes, and graceful shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.common.cancellation import caller_scope
from services.common.config import ServerConfig
from services.common.errors import StoreError, message_for, status_for
from services.common.metrics import GPU_PEAK_KEY, RPC_LATENCY, RPC_REQUESTS, cap_gpu_memory, gpu_peak_bytes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServiceBinding:
    """One gRPC service to host: its full name and a function adding the servicer."""

    full_name: str
    add_to_server: Callable[[grpc.Server], None]

    @classmethod
    def of(cls, pb2, service: str, add_servicer, servicer) -> ServiceBinding:
        """Binding for `service` of a generated `pb2` module, added with its `add_*_to_server`."""
        return cls(pb2.DESCRIPTOR.services_by_name[service].full_name, lambda server: add_servicer(servicer, server))


# Answer without the bearer token (policy, README "Reliability and security"): probes and API
# discovery; they reveal health and the API, never data.
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})


class _Interceptor(grpc.ServerInterceptor):
    """Counts and times RPCs, checks the bearer token, maps exceptions to status codes and, on GPU,
    reports the process's peak GPU memory in each unary reply's trailing metadata."""

    def __init__(self, auth_token: str, ready: threading.Event, max_streams: int):
        self._auth_token = auth_token
        self._ready = ready
        self._max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method.lstrip("/")
        service, _, method = full.partition("/")
        exempt = service in OPEN_SERVICES
        if self._auth_token and not exempt:
            metadata = dict(handler_call_details.invocation_metadata or ())
            given = str(metadata.get("authorization", "")).encode()
            if not hmac.compare_digest(given, f"Bearer {self._auth_token}".encode()):
                return _replace(handler, _deny)
        if not exempt and not self._ready.is_set():
            return _replace(handler, _loading)
        if handler.unary_unary:
            return _replace(handler, self._wrap_unary(handler.unary_unary, service, method))
        if handler.unary_stream:
            return _replace(handler, self._wrap_stream(handler.unary_stream, service, method))
        return handler

    @staticmethod
    def _finish(context, service, method, start, exc):
        if exc is not None and not isinstance(exc, _Aborted):
            code = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s/%s failed", service, method, exc_info=exc)
            message = message_for(exc)
        else:
            code, message = None, None
        name = code or context.code() or grpc.StatusCode.OK
        name = name.name if isinstance(name, grpc.StatusCode) else str(name)
        RPC_REQUESTS.labels(service, method, name).inc()
        RPC_LATENCY.labels(service, method).observe(time.perf_counter() - start)
        if code is not None:
            context.abort(code, message)

    def _wrap_unary(self, behaviour, service, method):
        def wrapped(request, context):
            start = time.perf_counter()
            try:
                with caller_scope(context.is_active):
                    response = behaviour(request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status code
                self._finish(context, service, method, start, _classify(exc))
                raise
            self._finish(context, service, method, start, None)
            try:
                peak = gpu_peak_bytes()
            except Exception:  # noqa: BLE001 - a figure must never fail the call it rides on
                log.debug("GPU peak memory unavailable", exc_info=True)
                peak = None
            if peak is not None:  # callers add up the GPU memory behind their work
                context.set_trailing_metadata(((GPU_PEAK_KEY, str(peak)),))
            return response

        return wrapped

    def _wrap_stream(self, behaviour, service, method):
        def wrapped(request, context):
            start = time.perf_counter()
            if not self._streams.acquire(blocking=False):  # the executor keeps max_workers threads for the rest
                RPC_REQUESTS.labels(service, method, "RESOURCE_EXHAUSTED").inc()
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._max_streams} streams are open on this service (its max_streams): close one or retry later",
                )
            try:
                yield from behaviour(request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status code
                self._finish(context, service, method, start, _classify(exc))
                raise
            finally:
                self._streams.release()
            self._finish(context, service, method, start, None)

        return wrapped


class _Aborted(Exception):
    """Marker for an exception raised by context.abort (status already set)."""


def _classify(exc: Exception) -> Exception:
    # context.abort raises a bare Exception whose status is already on the context.
    return _Aborted() if type(exc) is Exception else exc


def _deny(request, context):
    RPC_REQUESTS.labels("auth", "denied", "UNAUTHENTICATED").inc()
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization' metadata")


def _loading(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, "service is loading its models; retry when health is SERVING")


def _replace(handler, behaviour):
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(behaviour, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_stream_rpc_method_handler(behaviour, handler.request_deserializer, handler.response_serializer)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials:
    def read(path):
        with open(path, "rb") as fh:
            return fh.read()

    ca = read(config.tls_client_ca) if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(config.tls_key), read(config.tls_cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class RunningServer:
    """A started server: its bound ports, health servicer and a stop method."""

    def __init__(self, server: grpc.Server, port: int, metrics_port: int, health_servicer, names, grace, ready):
        self.server = server
        self.port = port
        self.metrics_port = metrics_port
        self.health = health_servicer
        self._names = names
        self._grace = grace
        self.ready = ready

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._names):
            self.health.set(name, status)
        if serving:
            self.ready.set()

    def stop(self) -> None:
        """Drain: report NOT_SERVING, let in-flight RPCs finish within the grace period."""
        self.ready.clear()
        self.health.enter_graceful_shutdown()
        self.server.stop(self._grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(
    config: ServerConfig,
    bindings: Iterable[ServiceBinding],
    load: Callable[[], None] | None = None,
    install_signal_handlers: bool = True,
) -> RunningServer:
    """Start serving `bindings`; run `load` in the background, then report SERVING."""
    bindings = list(bindings)
    ready = threading.Event()
    size = config.max_message_mb * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers + config.max_streams),
        interceptors=[_Interceptor(config.auth_token, ready, config.max_streams)],
        options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    for binding in bindings:
        binding.add_to_server(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.full_name for b in bindings]
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    if config.tls_cert:
        port = server.add_secure_port(address, _credentials(config))
    else:
        port = server.add_insecure_port(address)
    metrics_port = config.metrics_port
    if metrics_port >= 0:
        metrics_server, _ = start_http_server(metrics_port, addr=config.host)
        metrics_port = metrics_server.server_port
    running = RunningServer(server, port, metrics_port, health_servicer, names, config.grace_seconds, ready)
    running.set_serving(False)
    server.start()
    log.info("listening on %s:%d, metrics on %d", config.host, port, metrics_port)

    def do_load():
        try:
            cap_gpu_memory(config.gpu_memory_fraction)
            if load is not None:
                load()
        except Exception:
            log.exception("loading failed; health stays NOT_SERVING")
            return
        running.set_serving(True)
        log.info("serving %s", ", ".join(names))

    threading.Thread(target=do_load, name="load", daemon=True).start()
    if install_signal_handlers:

        def on_signal(signum, _frame):
            log.info("signal %d: draining", signum)
            threading.Thread(target=running.stop, daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    return running


def run_service(main: Callable[[], None]) -> None:
    """Run a service's `main`; a start-up error (a bad setting, an unusable or busy store) is one
    line on stderr and exit status 2, not a traceback."""
    try:
        main()
    except (ValueError, StoreError, OSError) as exc:  # OSError: e.g. an unreadable TLS file, a busy port
        print(f"cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
