"""The channel plumbing every typed client builds on.

Channels ride out restarts and overload: a unary call that fails with UNAVAILABLE or
RESOURCE_EXHAUSTED (overload, not gRPC's own message-size limit) is retried with exponential
backoff and jitter until `ClientConfig.retry_seconds` have passed since its first failure.
DEADLINE_EXCEEDED is retried only on the calls whose protos declare them safe to repeat
(`idempotency_level`: reads, pure computations, CancelRun, and EvaluatePrompt, whose answers are
cached as they come); a late Generate, StartRun or model fit may still have done its work.
Channels carry the bearer token when configured and use TLS when a CA is given; clients set a
deadline on every attempt. Each service's typed client lives beside it (`services/<service>/client.py`).
"""

from __future__ import annotations

import collections
import logging
import random
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ClientConfig
from services.common.errors import NotFoundError
from services.common.metrics import GPU_PEAK_KEY

log = logging.getLogger(__name__)

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
SAFE_LEVELS = frozenset({descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT})


def safe_to_repeat(method: str) -> bool:
    """Whether `method` ("/package.Service/Method") may be sent again after its deadline passed:
    its proto declares an idempotency_level of NO_SIDE_EFFECTS or IDEMPOTENT (a health check is
    a read). Unknown methods are not."""
    service, _, name = method.lstrip("/").partition("/")
    if service == "grpc.health.v1.Health":
        return True
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return False
    return found.GetOptions().idempotency_level in SAFE_LEVELS


def call(rpc, request, timeout):
    """`rpc(request)`; NOT_FOUND raises NotFoundError (a typed client's 'no such id')."""
    try:
        return rpc(request, timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFoundError(exc.details()) from exc
        raise


def transient(code: grpc.StatusCode | None, details: str | None) -> bool:
    """UNAVAILABLE, or RESOURCE_EXHAUSTED from overload (a too-large message stays too large)."""
    return code in TRANSIENT and "larger than max" not in (details or "")


class _RetryInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Retries transient failures of unary calls with capped exponential backoff (0.5 s doubling
    to 15 s, +-25% jitter) until `budget` seconds have passed since the call first failed."""

    def __init__(self, budget: float):
        self.budget = budget

    def retryable(self, method: str, code: grpc.StatusCode, details: str | None) -> bool:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return safe_to_repeat(method)
        return transient(code, details)

    def intercept_unary_unary(self, continuation, details, request):
        failing_since, delay = None, 0.5
        while True:
            outcome = continuation(details, request)
            code = outcome.code()
            if code in (None, grpc.StatusCode.OK) or not self.retryable(details.method, code, outcome.details()):
                return outcome
            failing_since = failing_since or time.monotonic()
            pause = delay * random.uniform(0.75, 1.25)
            if time.monotonic() - failing_since + pause > self.budget:
                return outcome
            log.warning("%s: %s (%s); retrying in %.1fs", details.method, code.name, outcome.details(), pause)
            time.sleep(pause)
            delay = min(delay * 2, 15.0)


class _TokenAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", f"Bearer {self._token}"),), None)


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the bearer token on insecure (loopback) channels, where call credentials are refused."""

    def __init__(self, token: str):
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = [*(details.metadata or ()), self._metadata]
        return _Details(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class GpuPeak(grpc.UnaryUnaryClientInterceptor):
    """The highest peak GPU memory (bytes) the service reported in its replies' trailing
    metadata; None while it reported none (it runs on CPU)."""

    def __init__(self):
        self.bytes: int | None = None

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        for key, value in outcome.trailing_metadata() or ():
            if key == GPU_PEAK_KEY:
                self.bytes = max(self.bytes or 0, int(value))
        return outcome


class _Details(
    collections.namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression"),
    grpc.ClientCallDetails,
):
    pass


def make_channel(config: ClientConfig, gpu_peak: GpuPeak | None = None) -> grpc.Channel:
    """A channel with retries, message-size limits and optional TLS/token; `gpu_peak` records
    the GPU memory the service reports."""
    size = config.max_message_mb * 1024 * 1024
    options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
    interceptors = [gpu_peak] if gpu_peak is not None else []
    if config.tls_ca:

        def read(path):
            with open(path, "rb") as fh:
                return fh.read()

        identity = (read(config.tls_key), read(config.tls_cert)) if config.tls_cert else (None, None)
        creds = grpc.ssl_channel_credentials(read(config.tls_ca), *identity)
        if config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", config.tls_server_name))
        if config.auth_token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_TokenAuth(config.auth_token))
            )
        channel = grpc.secure_channel(config.address, creds, options)
    else:
        channel = grpc.insecure_channel(config.address, options)
        if config.auth_token:
            interceptors.append(_BearerInterceptor(config.auth_token))
    if config.retry_seconds > 0:
        interceptors.append(_RetryInterceptor(config.retry_seconds))
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel


class BaseClient:
    """Base: owns a channel and a default deadline."""

    def __init__(self, config: ClientConfig | str):
        self.config = ClientConfig(config) if isinstance(config, str) else config
        self.gpu_peak = GpuPeak()
        self.channel = make_channel(self.config, self.gpu_peak)
        self.timeout = self.config.timeout_seconds

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The health status name (SERVING, NOT_SERVING, ...) of `service` ('' = overall)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
