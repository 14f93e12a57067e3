"""Run the services as local processes on loopback (the `make demo` stack and integration tests).

`LocalStack` takes its wiring from `deploy/docker-compose.yml` (see `services.common.compose`):
it starts each service of the profile with that service's environment, in `depends_on` order,
waits on the service's own compose healthcheck command, and stops them with SIGTERM (graceful
drain), killing any that outlive the grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.common.compose import COMPOSE_FILE, ServiceSpec, load_services

# On a laptop the `models` volume is the user's cache: ~/.cache/promptopt/models, ~/.cache/huggingface.
DEFAULT_VOLUME_DIRS = {"models": Path.home() / ".cache"}


class Stack(ABC):
    """The compose profile's services, running somewhere; a context manager that brings them up,
    waits until each is SERVING, and takes them down (also when bringing them up failed).
    `services` maps module names (`encoder`, `llm_eval`, ...) to their ServiceSpec."""

    services: dict[str, ServiceSpec]

    @abstractmethod
    def up(self) -> None:
        """Start every service."""

    @abstractmethod
    def down(self) -> None:
        """Stop every service."""

    @abstractmethod
    def wait_serving(self, name: str, timeout: float = 600.0) -> None:
        """Block until `name` is SERVING (TimeoutError after `timeout` seconds)."""

    @abstractmethod
    def address(self, name: str) -> str:
        """host:port of `name`'s gRPC server."""

    @abstractmethod
    def start(self, name: str) -> None:
        """Start `name` (again)."""

    @abstractmethod
    def kill(self, name: str) -> None:
        """SIGKILL `name`, as a crash would."""

    @abstractmethod
    def pause(self, name: str) -> None:
        """Freeze `name` with its connections open (a hang)."""

    @abstractmethod
    def unpause(self, name: str) -> None:
        """Undo `pause`."""

    @abstractmethod
    def logs(self, name: str) -> str:
        """Everything `name` has logged, across its restarts."""

    def __enter__(self):
        try:
            self.up()
            for name in self.services:
                self.wait_serving(name)
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()


class LocalStack(Stack):
    """The compose `profile`'s services, keyed by module (`encoder`, `llm_eval`, ...).

    Args:
        state_dir: named volumes (SQLite state) and logs go under it.
        names: modules to start (default: all in the profile).
        port_offset: added to every port, so several stacks can share a machine.
        env: extra environment for every service (e.g. PROMPTOPT_LLM_EVAL_DEFAULT_MAX_TOKENS).
    """

    def __init__(
        self,
        state_dir: str | Path,
        names: Iterable[str] | None = None,
        profile: str = "cpu",
        port_offset: int = 0,
        env: Mapping[str, str] | None = None,
        compose_file: str | Path = COMPOSE_FILE,
        volume_dirs: Mapping[str, str | Path] | None = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        specs = load_services(
            compose_file, profile, self.state_dir, port_offset, {**DEFAULT_VOLUME_DIRS, **(volume_dirs or {})}
        )
        wanted = None if names is None else set(names)
        self.services: dict[str, ServiceSpec] = {s.module: s for s in specs if wanted is None or s.module in wanted}
        for spec in self.services.values():
            spec.env.update(env or {})
        self._by_compose_name = {s.name: s for s in self.services.values()}
        self.processes: dict[str, subprocess.Popen] = {}

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.services[name].port}"

    def _env(self, spec: ServiceSpec) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", **spec.env}

    def start(self, name: str) -> None:
        spec = self.services[name]
        for dependency, condition in spec.depends_on.items():
            if condition == "service_healthy" and dependency in self._by_compose_name:
                self.wait_serving(self._by_compose_name[dependency].module)
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for value in spec.env.values():  # volume directories exist before the service writes to them
            if value.startswith(str(self.state_dir / "volumes")):
                Path(value).parent.mkdir(parents=True, exist_ok=True)
        log = (log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(spec.command, env=self._env(spec), stdout=log, stderr=subprocess.STDOUT)

    def healthy(self, name: str) -> bool:
        """Runs the service's compose healthcheck command, as Docker would."""
        spec = self.services[name]
        result = subprocess.run(spec.healthcheck, env=self._env(spec), capture_output=True, timeout=30)
        return result.returncode == 0

    def wait_serving(self, name: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        process = self.processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.log_path(name)}")
            if self.healthy(name):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{name} not SERVING after {timeout:.0f}s; see {self.log_path(name)}")

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def logs(self, name: str) -> str:
        """Everything `name` has logged, across its restarts."""
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, grace: float = 15.0) -> int | None:
        process = self.processes.get(name)
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
        process = self.processes[name]
        process.kill()
        process.wait()

    def pause(self, name: str) -> None:
        """SIGSTOP: the service hangs with its connections open."""
        self.processes[name].send_signal(signal.SIGSTOP)

    def unpause(self, name: str) -> None:
        """SIGCONT after `pause`."""
        self.processes[name].send_signal(signal.SIGCONT)

    def up(self) -> None:
        for name in self.services:
            self.start(name)

    def down(self) -> None:
        for name in reversed(list(self.services)):
            self.stop(name)
