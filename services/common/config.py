"""Frozen config dataclasses loaded from environment variables.

Each service defines one frozen dataclass; `from_env` fills it from variables named
`<PREFIX><FIELD_NAME_UPPER>` (e.g. `PROMPTOPT_ENCODER_PORT`) and validates the values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from pathlib import Path

from services.common.errors import shown

REPOSITORY_DATASETS = Path(__file__).resolve().parents[2] / "datasets"


def datasets_dir() -> Path:
    """`$PROMPTOPT_DATASETS_DIR`, else the repository's `datasets/` (GSM8K and recorded grids are committed)."""
    return Path(os.environ.get("PROMPTOPT_DATASETS_DIR") or REPOSITORY_DATASETS).resolve()


class ConfigError(ValueError):
    """A config value is missing or malformed; the message names the variable."""


def _parse(raw: str, kind: type, name: str):
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is str:
            return raw
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    raise ConfigError(f"{name}: unsupported config type {kind}")


def from_env(cls, prefix: str, env: Mapping[str, str] | None = None):
    """Build `cls` from `env` (default `os.environ`), using field defaults for unset names."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        name = prefix + field.name.upper()
        if name in env:
            kind = hints[field.name]
            if typing.get_origin(kind) is typing.Union:  # Optional[X]
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            values[field.name] = _parse(env[name], kind, name)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{prefix}*: {exc}") from None


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Transport settings every server shares (prefix `PROMPTOPT_<SERVICE>_`)."""

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0
    max_message_mb: int = 64
    max_workers: int = 8  # threads for unary calls
    max_streams: int = 64  # streams (WatchRun, Health.Watch) open at once, each on its own thread
    max_concurrent_rpcs: int = 160  # calls in flight or queued, streams included
    grace_seconds: float = 10.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_token: str = dataclasses.field(default="", repr=False)
    gpu_memory_fraction: float = 0.0

    def __post_init__(self):
        if not 0 <= self.gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction {self.gpu_memory_fraction} must lie in [0, 1] (0 = no cap)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.max_message_mb <= 0:
            raise ValueError("max_message_mb must be positive")
        if self.max_workers < 1 or self.max_streams < 1:
            raise ValueError("max_workers and max_streams must be positive")
        if self.max_concurrent_rpcs <= self.max_streams + self.max_workers:
            raise ValueError(
                f"max_concurrent_rpcs {self.max_concurrent_rpcs} must exceed max_streams + max_workers "
                f"({self.max_streams + self.max_workers}): open streams would refuse every other call"
            )


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How a client reaches a service: address; TLS root (`tls_ca`), its own certificate for mTLS
    (`tls_cert`/`tls_key`) and the name the server's certificate must carry when it differs from
    the address (`tls_server_name`); bearer token; the deadline of each attempt and how long
    transient failures are retried (0 = never)."""

    address: str
    tls_ca: str = ""
    auth_token: str = dataclasses.field(default="", repr=False)
    max_message_mb: int = 64
    timeout_seconds: float = 600.0
    retry_seconds: float = 300.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""

    def __post_init__(self):
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_cert and not self.tls_ca:
            raise ValueError("tls_cert (a client certificate) needs tls_ca")


def json_object(text: str, field: str) -> dict:
    """`text` parsed as a JSON object ("" is {}); ValueError naming `field` otherwise."""
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise ValueError(f"{field} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object")
    return value


def refuse_fields(fields: dict, refused: dict[str, str], why: str) -> None:
    """ValueError "NAME WHY: INSTEAD" for the first field of `fields` that `refused` maps to what
    to do instead (a request field since retired, or one only the service sets)."""
    for name, instead in refused.items():
        if name in fields:
            raise ValueError(f"{name} {why}: {instead}")


def from_fields(cls, fields: dict, source: str) -> dict:
    """`fields` (parsed JSON) checked against the dataclass `cls`: unknown names are refused, each
    value must have its field's type (an int passes for a float). ValueError naming the field;
    returns the fields, ints made floats where the field is a float."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(fields) - set(hints))
    if unknown:
        raise ValueError(f"{source}: unknown fields {unknown}; known: {sorted(hints)}")
    return {name: coerced(value, hints[name], name) for name, value in fields.items()}


def coerced(value, kind: type, name: str):
    """`value`, which must have the type `kind` (an int passes for a float and is made one);
    ValueError naming `name` otherwise (a bool is no int)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def confined_path(path: str, root: str | Path, field: str, base: str | Path | None = None) -> str:
    """`path` resolved (a relative one from `base`, by default `root`); ValueError naming `field`
    unless it lies under `root`, so a client cannot make a service read or write elsewhere."""
    if not isinstance(path, str):
        raise ValueError(f"{field} must be a path (a string)")
    if len(path) > 4096 or any(len(part.encode()) > 255 for part in Path(path).parts) or "\0" in path:
        raise ValueError(f"{field} {shown(path)!r} is not a usable path (a name over 255 bytes, or a NUL)")
    root = Path(root).resolve()
    resolved = (Path(base or root).resolve() / path).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{field} {shown(path)!r} must lie under {root}")
    return str(resolved)


def default_pool_path() -> str:
    """The shipped APE pool (1000 instructions by Qwen2.5-7B-Instruct): EcoFlow's initial
    instructions and the decoder's seed texts by default, random search's default candidates."""
    return str(datasets_dir() / "prompts" / "ape_instructions_1000.json")
