"""Domain errors and their gRPC status codes.

Core modules raise these (or plain ValueError for malformed input); the server interceptor
maps them: ValueError -> INVALID_ARGUMENT, NotFoundError -> NOT_FOUND, OverloadedError ->
RESOURCE_EXHAUSTED, UnavailableError -> UNAVAILABLE, FailedPreconditionError (and
StorageFullError) -> FAILED_PRECONDITION, CallerGoneError -> CANCELLED.
"""

from __future__ import annotations

import grpc


class NotFoundError(LookupError):
    """The named run, model or dataset does not exist."""


class OverloadedError(RuntimeError):
    """The service is at capacity; retry later."""


class UnavailableError(RuntimeError):
    """The service is loading or draining."""


class CallerGoneError(RuntimeError):
    """The caller cancelled or its deadline passed; the work was stopped (what was done is kept)."""


class StoreError(RuntimeError):
    """A SQLite store cannot be opened or is held by another process (a start-up error)."""


class FailedPreconditionError(RuntimeError):
    """The request is valid but the system is not in a state to serve it."""


class StorageFullError(FailedPreconditionError):
    """A store's disk is full: the write was rolled back, everything stored before is intact.
    FAILED_PRECONDITION, so clients do not retry (and repay) work that cannot be stored."""


# A failed call to another service passes its code on where it says something about the request
# or the services' state (a missed deadline stays DEADLINE_EXCEEDED, so the caller's client keeps
# its rule of retrying that only for calls whose repeat pays nothing twice); anything else (e.g.
# UNAUTHENTICATED between services) is INTERNAL.
PASSED_ON = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
}


def _failed_call(exc: BaseException) -> bool:
    """A failed gRPC call (an RpcError that carries a status), as opposed to a domain error."""
    return isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None))


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for a domain exception or a failed downstream call (INTERNAL when unknown)."""
    if _failed_call(exc):
        code = exc.code()
        return code if code in PASSED_ON else grpc.StatusCode.INTERNAL
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, OverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, FailedPreconditionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, CallerGoneError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition; the message must name the field."""
    if not condition:
        raise ValueError(message)


def shown(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for an error message ("..." marks the cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def message_for(exc: BaseException) -> str:
    """The status details for `exc`: a downstream call's own details, else the exception's text."""
    if _failed_call(exc):
        return exc.details() or exc.code().name
    return str(exc) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """One line for a run's error: 'CODE: details' for a failed RPC, else 'Type: message'."""
    if _failed_call(exc):
        text = f"{exc.code().name}: {exc.details() or 'no details'}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
