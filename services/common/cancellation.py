"""Cooperative cancellation of long work whose caller has gone.

The gRPC server runs every unary handler inside `caller_scope(context.is_active)` (streaming
handlers watch `context.is_active()` themselves); long loops (the surrogate's training epochs
and inversion steps, the decoder's LLM-guided steps) call `check_caller()` once per iteration, which raises
CallerGoneError (status CANCELLED) once the caller cancelled or its deadline passed, so nobody's
abandoned request keeps a core busy. Outside a handler (in-process use) it never raises.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

from services.common.errors import CallerGoneError

_caller_active: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "caller_active", default=None
)


@contextlib.contextmanager
def caller_scope(is_active: Callable[[], bool]):
    """Within this block, `check_caller` asks `is_active` whether the caller is still there."""
    token = _caller_active.set(is_active)
    try:
        yield
    finally:
        _caller_active.reset(token)


def check_caller() -> None:
    """Raise CallerGoneError if the RPC being served was cancelled or ran past its deadline."""
    is_active = _caller_active.get()
    if is_active is not None and not is_active():
        raise CallerGoneError("the caller cancelled or its deadline passed; the work was stopped")
