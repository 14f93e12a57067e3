"""Read `deploy/docker-compose.yml` into local process specs: the compose file is the one source
of wiring for containers and for the loopback stack (`make demo`, integration tests).

A compose service becomes a local process when it is active in the chosen profile and its
command is `python -m services.<module>`. Container addresses, ports and volume paths in its
environment are rewritten for loopback:
- `<service or alias>:<port>` -> `127.0.0.1:<port + offset>`; `*_PORT` values -> `+ offset`;
  `*_HOST=0.0.0.0` -> `127.0.0.1`. Published ports must equal container ports (`"50051:50051"`).
- a value under a volume's mount target -> the same path under the volume's local directory
  (bind mounts: their host path; named volumes: `volume_dirs[name]`, else `<state_dir>/volumes/<name>`).
`${VAR}`, `${VAR:-default}` and `$$` are interpolated from the environment, as compose does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"
MODULES = ("encoder", "decoder", "llm_eval", "surrogate", "optimizer", "tuner")
_MODULE = re.compile(r"^services\.(\w+)$")
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


class ComposeError(ValueError):
    """The compose file uses something the loopback harness cannot reproduce faithfully."""


@dataclasses.dataclass
class ServiceSpec:
    """One compose service as a local process."""

    name: str  # the compose service name, e.g. llm-eval-cpu
    module: str  # services.<module>, e.g. llm_eval
    command: list[str]
    env: dict[str, str]
    port: int
    metrics_port: int
    healthcheck: list[str] | None
    depends_on: dict[str, str]  # compose service name -> condition


def interpolate(value, env: Mapping[str, str]):
    """Compose variable interpolation over strings, lists and mappings."""
    if isinstance(value, str):

        def substitute(match):
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1) or match.group(3), match.group(2) or ""
            if ":-" in match.group(0):
                return env.get(name) or default
            return env.get(name, default)

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def read(path: str | Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> dict:
    """The compose document with anchors merged and variables interpolated."""
    with open(path) as handle:
        document = yaml.safe_load(handle)
    return interpolate(document, os.environ if env is None else env)


def active(service: dict, profile: str) -> bool:
    profiles = service.get("profiles")
    return not profiles or profile in profiles


def load_services(
    path: str | Path = COMPOSE_FILE,
    profile: str = "cpu",
    state_dir: str | Path = "state",
    port_offset: int = 0,
    volume_dirs: Mapping[str, str | Path] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ServiceSpec]:
    """The profile's python services in dependency order, wired for loopback."""
    path = Path(path).resolve()
    document = read(path, env)
    services = document["services"]
    hosts = set(services)
    for service in services.values():
        for network in (service.get("networks") or {}).values():
            hosts.update((network or {}).get("aliases", []))
    specs = {}
    for name, service in services.items():
        command = service.get("command") or []
        module = _MODULE.match(command[2]) if command[:2] == ["python", "-m"] and len(command) > 2 else None
        if module is None or not active(service, profile):
            continue
        _check_ports(name, service)
        mounts = _mounts(service, path.parent, Path(state_dir).resolve(), volume_dirs or {})
        service_env = {
            key: _rewrite(key, str(value), hosts, port_offset, mounts)
            for key, value in (service.get("environment") or {}).items()
        }
        prefix = f"PROMPTOPT_{module.group(1).upper()}_"
        test = (service.get("healthcheck") or {}).get("test")
        specs[name] = ServiceSpec(
            name=name,
            module=module.group(1),
            command=_local(command),
            env=service_env,
            port=int(service_env[prefix + "PORT"]),
            metrics_port=int(service_env[prefix + "METRICS_PORT"]),
            healthcheck=_local(test[1:]) if test and test[0] == "CMD" else None,
            depends_on={dep: spec.get("condition", "service_started") for dep, spec in depends_on(service).items()},
        )
    return _ordered(specs)


def _local(command: list[str]) -> list[str]:
    return [sys.executable if i == 0 and arg == "python" else arg for i, arg in enumerate(command)]


def _check_ports(name: str, service: dict) -> None:
    for mapping in service.get("ports", []):
        parts = str(mapping).split(":")
        if len(parts) != 2 or parts[0] != parts[1]:
            raise ComposeError(f"services.{name}.ports: {mapping!r} must publish the container port unchanged")


def _mounts(service: dict, base: Path, state_dir: Path, volume_dirs) -> list[tuple[str, Path]]:
    mounts = []
    for volume in service.get("volumes", []):
        if not isinstance(volume, str):
            raise ComposeError(f"volume {volume!r}: only the short `source:target[:mode]` syntax is supported")
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            local = (base / source).resolve()
        else:
            local = Path(volume_dirs.get(source, state_dir / "volumes" / source))
        mounts.append((target.rstrip("/"), local))
    return sorted(mounts, key=lambda m: -len(m[0]))


def _rewrite(key: str, value: str, hosts: set[str], offset: int, mounts) -> str:
    if key.endswith("_PORT") and value.isdigit():
        return str(int(value) + offset)
    if key.endswith("_HOST") and value == "0.0.0.0":
        return "127.0.0.1"
    for target, local in mounts:
        if value == target or value.startswith(target + "/"):
            return str(local) + value[len(target) :]

    def address(match):
        return f"127.0.0.1:{int(match.group(2)) + offset}" if match.group(1) in hosts else match.group(0)

    return re.sub(r"\b([\w.-]+):(\d+)\b", address, value)


def depends_on(service: dict) -> dict:
    """A service's depends_on as {name: {condition...}}, from either the list or the mapping form."""
    depends = service.get("depends_on") or {}
    return {name: {} for name in depends} if isinstance(depends, list) else depends


def _ordered(specs: dict[str, ServiceSpec]) -> list[ServiceSpec]:
    ordered, seen = [], set()

    def visit(name, trail=()):
        if name in trail:
            raise ComposeError(f"depends_on cycle: {' -> '.join((*trail, name))}")
        if name in seen or name not in specs:
            return
        for dependency in specs[name].depends_on:
            visit(dependency, (*trail, name))
        seen.add(name)
        ordered.append(specs[name])

    for name in specs:
        visit(name)
    return ordered
