"""Trace context: the current trace and span IDs, held in one context variable.

This module is framework-free on purpose. Every ``set`` is undone with its
token in the same frame; nothing here holds a token across a ``yield``.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar
from functools import partial
from typing import Any, NamedTuple

from instrument._loggate import emit, log_enabled


class TraceContext(NamedTuple):
    """The active trace: its ID and the ID of the innermost open span (or remote parent).

    ``usage`` is the token accumulator of the innermost ``@track_provider`` call,
    which ``record_usage`` writes to, and ``request`` the served HTTP request
    (``instrument._http.ServerRequest``) this work belongs to. They ride along so
    one context variable serves all three: each step of a decorated call, and
    each served request, sets exactly one.
    """

    trace_id: str
    span_id: str | None
    usage: Any = None
    request: Any = None


#: a ``TraceContext`` from a 4-tuple, without NamedTuple's Python-level ``__new__`` (hot paths)
make_context = partial(tuple.__new__, TraceContext)


#: the one context variable: the current trace (set and reset with tokens, in one frame)
trace_context: ContextVar[TraceContext | None] = ContextVar("instrument_trace", default=None)

# Accepted external trace IDs: what fits in a header, a log line and a label-free exemplar.
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)
_W3C_TRACE_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
# Not a secret: OpenTelemetry's SDK also draws trace IDs from the Mersenne Twister.
_getrandbits = random.getrandbits


def new_trace_id() -> str:
    """A fresh W3C-compatible trace ID: 32 lowercase hex digits, never all zeros."""
    bits = _getrandbits(128)
    while not bits:  # pragma: no cover - one chance in 2**128
        bits = _getrandbits(128)
    return "%032x" % bits  # noqa: UP031 - %-formatting is the fastest here (hot path)


def new_span_id() -> str:
    """A fresh W3C-compatible span ID: 16 lowercase hex digits, never all zeros."""
    bits = _getrandbits(64)
    while not bits:  # pragma: no cover
        bits = _getrandbits(64)
    return "%016x" % bits  # noqa: UP031 - %-formatting is the fastest here (hot path)


def get_trace_id() -> str | None:
    """The current trace ID, or None outside any trace."""
    ctx = trace_context.get()
    return ctx.trace_id if ctx is not None else None


def get_span_id() -> str | None:
    """The ID of the innermost open span (or the remote parent span), or None."""
    ctx = trace_context.get()
    return ctx.span_id if ctx is not None else None


def current() -> TraceContext | None:
    return trace_context.get()


def current_request() -> Any:
    """The served request (``instrument._http.ServerRequest``) of this context, or None: it
    rides on the one trace context variable, so serving a request sets a single variable."""
    ctx = trace_context.get()
    return ctx.request if ctx is not None else None


def is_valid_trace_id(value: object) -> bool:
    """True when ``value`` is 1-128 characters of ``[A-Za-z0-9._:-]``."""
    return isinstance(value, str) and VALID_ID.fullmatch(value) is not None


def is_w3c_trace_id(value: str) -> bool:
    return (len(value) == 32 and _W3C_TRACE_ID.fullmatch(value) is not None
            and value != "0" * 32)


def safe_repr(value: object, limit: int = 64) -> str:
    """An escaped, truncated rendering of untrusted input, safe to put in a log line."""
    text = value if isinstance(value, str) else repr(value)
    escaped = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(escaped) > limit:
        escaped = escaped[:limit] + "...(truncated)"
    return escaped


def accept_trace_id(value: object) -> str:
    """Return ``value`` when valid, else a fresh ID (and a warning naming the rejected value)."""
    if is_valid_trace_id(value):
        return value  # type: ignore[return-value]
    replacement = new_trace_id()
    if log_enabled(30):
        emit("WARNING", "rejected an invalid trace ID; started a new trace",
             {"event": "invalid_trace_id", "rejected": safe_repr(value), "trace_id": replacement})
    return replacement
