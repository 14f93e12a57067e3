"""The tuner service's own settings (env `PROMPTOPT_TUNER_*`): where its run store is, and how its
trial workers reach the model services (the same for local worker processes and Kubernetes
worker Jobs, which read this environment too)."""

from __future__ import annotations

import dataclasses

from services.common.config import ClientConfig

PREFIX = "PROMPTOPT_TUNER_"


@dataclasses.dataclass(frozen=True)
class TunerConfig:
    store_path: str = "state/tuner/runs.sqlite"
    # Optuna storage for runs that name none (PostgreSQL in Kubernetes, from a Secret); empty:
    # SQLite in each run's output directory
    storage_url: str = dataclasses.field(default="", repr=False)
    encoder_address: str = "127.0.0.1:50051"
    surrogate_address: str = "127.0.0.1:50054"
    optimizer_address: str = "127.0.0.1:50055"
    auth_token: str = dataclasses.field(default="", repr=False)
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    rpc_timeout_seconds: float = 600.0
    retry_seconds: float = 300.0

    def client(self, address: str) -> ClientConfig:
        """How a trial reaches a service (TLS and token as this service's clients)."""
        mtls = {"tls_cert": self.tls_cert, "tls_key": self.tls_key} if self.tls_ca else {}
        return ClientConfig(
            address,
            tls_ca=self.tls_ca,
            auth_token=self.auth_token,
            timeout_seconds=self.rpc_timeout_seconds,
            retry_seconds=self.retry_seconds,
            **mtls,
        )
