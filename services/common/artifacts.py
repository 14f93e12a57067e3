"""Artifacts: what users bring to a service (instruction lists, exemplar sets, recorded
evaluations, embeddings) uploaded as content and named by id, never by a path on the service.

`ArtifactStore` is the interface (put, get, info, list, delete by id); `FilesystemArtifactStore`
keeps them under a service's state directory. An artifact's id is derived from its kind and
content (the same upload gives the same id), and each kind has a parser that checks the content
at upload, so a malformed file is refused before any run names it.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from services.common.errors import FailedPreconditionError, NotFoundError, shown

ARTIFACT_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_ARTIFACT_NAME = 200  # characters of an artifact's label (its file name on the client)

# kind -> parser(content) -> the parsed value; ValueError saying what is wrong with the content
Parser = Callable[[bytes], object]
# what a parser may raise on hostile content (nesting too deep, numbers too large, wrong types)
PARSE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """An artifact's metadata (its content is `ArtifactStore.get`)."""

    artifact_id: str
    kind: str
    name: str
    size_bytes: int
    sha256: str
    create_time: float


def artifact_id(kind: str, content: bytes) -> str:
    """The id of `content` uploaded as `kind` (128 bits of their SHA-256)."""
    return hashlib.sha256(kind.encode() + b"\0" + content).hexdigest()[:32]


def check_id(value: str, field: str) -> str:
    """`value` if it has an artifact id's form; ValueError naming `field` otherwise."""
    if not isinstance(value, str) or not ARTIFACT_ID.match(value):
        raise ValueError(f"{field} must be an artifact id (32 hex digits from an upload), got {shown(str(value))!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ArtifactLimits:
    """Operator settings (`from_env` with the service's prefix, e.g. PROMPTOPT_OPTIMIZER_MAX_ARTIFACT_MB):
    the largest artifact, and the most megabytes and artifacts one store keeps."""

    max_artifact_mb: int = 60  # below the server's max_message_mb (64), which carries the upload
    artifact_quota_mb: int = 2048
    max_artifacts: int = 10000

    def __post_init__(self):
        for name in ("max_artifact_mb", "artifact_quota_mb", "max_artifacts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def max_bytes(self) -> int:
        return self.max_artifact_mb * 1024 * 1024

    def check(self, used_bytes: int, count: int, size: int) -> None:
        """FailedPreconditionError when one more artifact of `size` bytes would pass a limit."""
        if count + 1 > self.max_artifacts or used_bytes + size > self.artifact_quota_mb * 1024 * 1024:
            raise FailedPreconditionError(
                f"the artifact store is full ({count} artifacts, {used_bytes} bytes; its limits: max_artifacts "
                f"{self.max_artifacts}, artifact_quota_mb {self.artifact_quota_mb}): delete the ones no longer needed"
            )


class ArtifactStore(abc.ABC):
    """Artifacts of the kinds in `parsers`, within `limits`."""

    def __init__(self, parsers: Mapping[str, Parser], limits: ArtifactLimits = ArtifactLimits()):
        self.parsers, self.limits = dict(parsers), limits

    def put(self, kind: str, name: str, content: bytes) -> ArtifactInfo:
        """Store `content` as `kind` (checked by the kind's parser); the same kind and content
        give the same id and are stored once. ValueError naming the field that is wrong;
        FailedPreconditionError when the store's quota would be passed."""
        if kind not in self.parsers:
            raise ValueError(f"kind must be one of {sorted(self.parsers)}, got {shown(str(kind))!r}")
        if len(name) > MAX_ARTIFACT_NAME:
            raise ValueError(f"name must be at most {MAX_ARTIFACT_NAME} characters, got {len(name)}")
        if not content:
            raise ValueError("content is empty")
        if len(content) > self.limits.max_bytes:
            raise ValueError(
                f"content must be at most {self.limits.max_bytes} bytes (the service's max_artifact_mb), "
                f"got {len(content)}"
            )
        try:
            self.parsers[kind](content)
        except PARSE_ERRORS as exc:
            raise ValueError(f"content is not a valid {kind} artifact: {exc or type(exc).__name__}") from exc
        digest = hashlib.sha256(content).hexdigest()
        info = ArtifactInfo(artifact_id(kind, content), kind, name, len(content), digest, time.time())
        return self._write(info, content)

    def named(self, value: str, kind: str, field: str) -> ArtifactInfo:
        """The metadata of artifact `value`, which a request's `field` names and which must be of
        `kind`; ValueError naming `field` when it is no such artifact."""
        check_id(value, field)
        try:
            info = self.info(value)
        except NotFoundError:
            raise ValueError(f"{field} {value!r} is no artifact on this service: upload the file first") from None
        if info.kind != kind:
            raise ValueError(f"{field} {value!r} holds {info.kind}, not {kind}")
        return info

    def load(self, value: str, kind: str, field: str):
        """The parsed content of artifact `value` (see `named`; a run names its inputs by upload id)."""
        self.named(value, kind, field)
        try:
            return self.parsers[kind](self.get(value))
        except PARSE_ERRORS as exc:
            raise ValueError(f"{field} {value!r}: {exc or type(exc).__name__}") from exc

    @abc.abstractmethod
    def _write(self, info: ArtifactInfo, content: bytes) -> ArtifactInfo:
        """Store `content` under `info` unless stored already; the stored artifact's info."""

    @abc.abstractmethod
    def get(self, value: str) -> bytes:
        """An artifact's content; NotFoundError when there is none."""

    @abc.abstractmethod
    def info(self, value: str) -> ArtifactInfo:
        """An artifact's metadata; NotFoundError when there is none."""

    @abc.abstractmethod
    def list(self, kind: str = "") -> list[ArtifactInfo]:
        """Every artifact (of `kind` when given), newest first."""

    @abc.abstractmethod
    def delete(self, value: str) -> bool:
        """Remove an artifact; whether there was one."""


class FilesystemArtifactStore(ArtifactStore):
    """Artifacts as files under `root` (`<id>` holds the content, `<id>.json` its metadata),
    written atomically: a crash leaves an artifact whole or absent."""

    def __init__(self, root: str | Path, parsers: Mapping[str, Parser], limits: ArtifactLimits = ArtifactLimits()):
        super().__init__(parsers, limits)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, value: str) -> Path:
        return self.root / check_id(value, "artifact_id")

    def _write(self, info: ArtifactInfo, content: bytes) -> ArtifactInfo:
        with self._lock:
            try:
                return self.info(info.artifact_id)
            except NotFoundError:
                pass
            stored = self.list()
            self.limits.check(sum(i.size_bytes for i in stored), len(stored), len(content))
            path = self._path(info.artifact_id)
            _atomic_write(path, content)
            _atomic_write(path.with_suffix(".json"), json.dumps(dataclasses.asdict(info)).encode())
            return info

    def get(self, value: str) -> bytes:
        self.info(value)
        try:
            return self._path(value).read_bytes()
        except FileNotFoundError:  # deleted since its metadata was read
            raise NotFoundError(f"artifact {value!r} not found") from None

    def file(self, value: str, kind: str, field: str) -> Path:
        """The file holding artifact `value` (see `named`), read in place, e.g. memory-mapped."""
        self.named(value, kind, field)
        return self._path(value)

    def info(self, value: str) -> ArtifactInfo:
        meta = self._path(value).with_suffix(".json")
        try:
            return ArtifactInfo(**json.loads(meta.read_text()))
        except FileNotFoundError:
            raise NotFoundError(f"artifact {value!r} not found") from None

    def list(self, kind: str = "") -> list[ArtifactInfo]:
        found = []
        for meta in self.root.glob("*.json"):
            if ARTIFACT_ID.match(meta.stem):
                try:
                    found.append(ArtifactInfo(**json.loads(meta.read_text())))
                except FileNotFoundError:  # deleted meanwhile
                    continue
        return sorted((i for i in found if not kind or i.kind == kind), key=lambda i: -i.create_time)

    def delete(self, value: str) -> bool:
        path = self._path(value)
        with self._lock:
            existed = path.with_suffix(".json").exists()
            path.with_suffix(".json").unlink(missing_ok=True)  # metadata first: a half-deleted one is absent
            path.unlink(missing_ok=True)
        return existed


def _atomic_write(path: Path, content: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def json_or_jsonl(content: bytes):
    """`content` as one JSON document, else as JSONL (a list of its lines' values); ValueError
    when it is neither."""
    try:
        return json_content(content)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]
        except ValueError as exc:
            raise ValueError(f"neither JSON nor JSONL ({exc})") from None


def json_content(content: bytes):
    """`content` parsed as UTF-8 JSON; ValueError otherwise."""
    try:
        return json.loads(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc})") from None
