"""The channel plumbing every typed client builds on.

Channels retry UNAVAILABLE with exponential backoff (gRPC service config), carry the bearer
token when configured, use TLS when a CA is given, and clients set a deadline on every call.
Each service's typed client lives beside it (`services/<service>/client.py`).
"""

from __future__ import annotations

import collections
import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ClientConfig

_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.2s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


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
    options = [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(_RETRY_POLICY)),
    ]
    if config.tls_ca:
        with open(config.tls_ca, "rb") as fh:
            creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
        if config.auth_token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_TokenAuth(config.auth_token))
            )
        return grpc.secure_channel(config.address, creds, options)
    channel = grpc.insecure_channel(config.address, options)
    if config.auth_token:
        channel = grpc.intercept_channel(channel, _BearerInterceptor(config.auth_token))
    return channel


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
