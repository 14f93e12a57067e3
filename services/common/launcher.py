"""Run the services as local processes on loopback (the `make demo` stack and integration tests).

`LocalStack` starts each service with its env, waits until health reports SERVING, and stops
them with SIGTERM (graceful drain), killing any that outlive the grace period.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.common.clients import _Client

BASE_PORT = 50051
SERVICES = ("encoder", "decoder", "llm_eval", "surrogate", "optimizer", "tuner")


@dataclasses.dataclass
class ServiceProcess:
    name: str
    port: int
    metrics_port: int
    env: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalStack:
    """Starts `names` (default: all six) on ports base_port + index, metrics on 9100 + index.

    Args:
        state_dir: per-service SQLite state and logs go under it.
        env: extra environment for every service (e.g. PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS).
    """

    def __init__(
        self,
        state_dir: str | Path,
        names=SERVICES,
        base_port: int = BASE_PORT,
        metrics_base_port: int = 9101,
        env: dict[str, str] | None = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.services: dict[str, ServiceProcess] = {}
        ports = {n: base_port + i for i, n in enumerate(SERVICES)}
        for i, name in enumerate(SERVICES):
            if name not in names:
                continue
            prefix = f"PROMPTOPT_{name.upper()}_"
            service_env = {
                prefix + "HOST": "127.0.0.1",
                prefix + "PORT": str(ports[name]),
                prefix + "METRICS_PORT": str(metrics_base_port + i),
                prefix + "CACHE_PATH": str(self.state_dir / name / "answers.sqlite"),
                prefix + "STORE_PATH": str(self.state_dir / name / "runs.sqlite"),
                "PROMPTOPT_OPTIMIZER_LLM_EVAL_ADDRESS": f"127.0.0.1:{ports['llm_eval']}",
                "PROMPTOPT_DECODER_ENCODER_ADDRESS": f"127.0.0.1:{ports['encoder']}",
            }
            service_env.update(env or {})
            self.services[name] = ServiceProcess(name, ports[name], metrics_base_port + i, service_env)

    def address(self, name: str) -> str:
        return self.services[name].address

    def start(self, name: str) -> None:
        service = self.services[name]
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = (log_dir / f"{name}.log").open("ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **service.env}
        service.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def wait_serving(self, name: str, timeout: float = 600.0) -> None:
        service = self.services[name]
        deadline = time.monotonic() + timeout
        with _Client(service.address) as client:
            while time.monotonic() < deadline:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {service.process.returncode}; see {self.log_path(name)}")
                try:
                    if client.health(timeout=2.0) == "SERVING":
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"{name} not SERVING after {timeout:.0f}s; see {self.log_path(name)}")

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def stop(self, name: str, grace: float = 15.0) -> int | None:
        process = self.services[name].process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        process = self.services[name].process
        process.kill()
        process.wait()

    def __enter__(self):
        try:
            for name in self.services:
                self.start(name)
            for name in self.services:
                self.wait_serving(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for name in reversed(list(self.services)):
            self.stop(name)
