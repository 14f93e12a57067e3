"""Container health check over grpc.health.v1: `python -m services.common.healthcheck <service>`.

Reads the service's own `PROMPTOPT_<SERVICE>_PORT` from the environment it shares with the
service (Docker HEALTHCHECK, the compose healthcheck, the loopback harness) and exits 0 when
the service reports SERVING, 1 otherwise, printing the status.
"""

from __future__ import annotations

import os
import sys

from services.common.channel import BaseClient
from services.common.config import ClientConfig


def check(service: str, env=os.environ, timeout: float = 3.0) -> str:
    """The overall health status name of `service` (e.g. `llm_eval`) on its configured port.

    With TLS on (`<PREFIX>TLS_CERT`), the probe speaks TLS: it trusts `<PREFIX>TLS_CA` (else the
    client CA), presents the service's own certificate (mTLS servers require one; it must allow
    client auth) and expects the name `<PREFIX>TLS_SERVER_NAME` (default localhost)."""
    prefix = f"PROMPTOPT_{service.upper()}_"
    port = env.get(prefix + "PORT")
    if not port:
        raise ValueError(f"{prefix}PORT is not set; the health check reads the port the service listens on")
    tls = {}
    if env.get(prefix + "TLS_CERT"):
        ca = env.get(prefix + "TLS_CA") or env.get(prefix + "TLS_CLIENT_CA")
        if not ca:
            raise ValueError(f"{prefix}TLS_CERT is set: the probe needs {prefix}TLS_CA to verify the service")
        tls = {
            "tls_ca": ca,
            "tls_cert": env[prefix + "TLS_CERT"],
            "tls_key": env.get(prefix + "TLS_KEY", ""),
            "tls_server_name": env.get(prefix + "TLS_SERVER_NAME", "localhost"),
        }
    with BaseClient(ClientConfig(f"127.0.0.1:{port}", retry_seconds=0, **tls)) as client:  # a probe answers now
        return client.health(timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m services.common.healthcheck <service>", file=sys.stderr)
        return 2
    try:
        status = check(argv[0])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - not reachable yet is an unhealthy answer, not a crash
        print(f"{argv[0]}: unreachable ({type(exc).__name__})")
        return 1
    print(f"{argv[0]}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
