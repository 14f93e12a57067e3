"""The channel plumbing every typed client builds on.

Channels ride out restarts and overload: unary calls that fail with UNAVAILABLE or
RESOURCE_EXHAUSTED are retried with exponential backoff and jitter for up to
`ClientConfig.retry_seconds`; DEADLINE_EXCEEDED is retried too, except on the methods that
start or change something (`NOT_RETRIED_ON_DEADLINE`), where a late reply may still have done
its work. They carry the bearer token when configured, use TLS when a CA is given, and clients
set a deadline on every attempt. Each service's typed client lives beside it
(`services/<service>/client.py`).
"""

from __future__ import annotations

import collections
import logging
import random
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ClientConfig

log = logging.getLogger(__name__)

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
NOT_RETRIED_ON_DEADLINE = frozenset({"StartRun", "ResumeRun", "CancelRun", "DeleteModel"})


class _RetryInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Retries transient failures of unary calls with capped exponential backoff (0.5 s doubling
    to 15 s, +-25% jitter) until `budget` seconds have passed since the first attempt."""

    def __init__(self, budget: float, sleep=time.sleep):
        self.budget = budget
        self.sleep = sleep

    def retryable(self, method: str, code: grpc.StatusCode) -> bool:
        if code in TRANSIENT:
            return True
        return code == grpc.StatusCode.DEADLINE_EXCEEDED and method.rsplit("/", 1)[-1] not in NOT_RETRIED_ON_DEADLINE

    def intercept_unary_unary(self, continuation, details, request):
        start, delay = time.monotonic(), 0.5
        while True:
            outcome = continuation(details, request)
            code = outcome.code()
            if code is None or code == grpc.StatusCode.OK or not self.retryable(details.method, code):
                return outcome
            pause = delay * random.uniform(0.75, 1.25)
            if time.monotonic() - start + pause > self.budget:
                return outcome
            log.warning("%s: %s (%s); retrying in %.1fs", details.method, code.name, outcome.details(), pause)
            self.sleep(pause)
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


class _Details(
    collections.namedtuple("_Details", "method timeout metadata credentials wait_for_ready compression"),
    grpc.ClientCallDetails,
):
    pass


def make_channel(config: ClientConfig) -> grpc.Channel:
    """A channel with retries, message-size limits and optional TLS/token."""
    size = config.max_message_mb * 1024 * 1024
    options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
    interceptors = []
    if config.tls_ca:
        with open(config.tls_ca, "rb") as fh:
            creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
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
        self.channel = make_channel(self.config)
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
