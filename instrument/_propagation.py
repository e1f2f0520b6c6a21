"""Trace propagation over HTTP headers: ``X-Trace-ID`` and W3C ``traceparent``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from instrument._context import (
    VALID_ID,
    TraceContext,
    accept_trace_id,
    is_valid_trace_id,
    is_w3c_trace_id,
    new_span_id,
    new_trace_id,
    trace_context,
)

TRACE_HEADER = "X-Trace-ID"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: W3C: at most 512 characters and 32 list-members; printable ASCII only (no CR/LF: a value
#: passed on into another request's headers must never split them)
_MAX_TRACESTATE = 512
_TRACESTATE_MEMBERS = 32
_PRINTABLE = re.compile(r"[\x20-\x7e]+", re.ASCII)

_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[ -~]*)?", re.ASCII)

H = TypeVar("H")


def get_header(headers: Any, name: str) -> str | None:
    """A header's value, matched case-insensitively, from any common header container.

    Works on plain dicts, lists of (name, value) pairs (``str`` or ASGI ``bytes``),
    and the frameworks' case-insensitive header types (anything with ``.get``).
    """
    if headers is None:
        return None
    lname = name.lower()
    if isinstance(headers, dict):
        value = headers.get(name)
        if value is None:
            for key, val in headers.items():
                if isinstance(key, str) and key.lower() == lname:
                    value = val
                    break
        return _text(value)
    if isinstance(headers, Mapping) or hasattr(headers, "getall") or (
            hasattr(headers, "get") and not isinstance(headers, (list, tuple))):
        return _text(headers.get(name))
    bname = lname.encode("latin-1")
    for pair in headers:
        key = pair[0]
        if (key.lower() == bname) if isinstance(key, bytes) else (key.lower() == lname):
            return _text(pair[1])
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace_id, parent_span_id) from a valid W3C ``traceparent``, else None."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id


# Lower-case names of the two headers we read, as ASGI (bytes) and WSGI-style (str) keys.
_WANTED: dict[Any, int] = {b"x-trace-id": 0, b"traceparent": 1, "x-trace-id": 0,
                           "traceparent": 1}


def _scan_pairs(pairs: list[Any]) -> tuple[str | None, str | None]:
    """Both headers from (name, value) pairs in one pass: ASGI's lower-case bytes names are
    a single dict lookup each; other spellings of the same length are lower-cased first."""
    trace_header = raw_parent = None
    for pair in pairs:
        index = _WANTED.get(pair[0])
        if index is None:
            key = pair[0]
            if len(key) != 10 and len(key) != 11:
                continue
            index = _WANTED.get(key.lower())
            if index is None:
                continue
        if index == 0:
            if trace_header is None:
                trace_header = pair[1]
        elif raw_parent is None:
            raw_parent = pair[1]
    if type(trace_header) is bytes:  # ASGI (decoded here: no call per value)
        trace_header = trace_header.decode("latin-1")
    elif trace_header is not None:
        trace_header = _text(trace_header)
    return trace_header, None if raw_parent is None else _text(raw_parent)


def extract_asgi(headers: Any) -> tuple[str | None, str | None, bool]:
    """``extract_checked`` for ASGI scope headers, whose names are lower-case bytes.

    The ASGI spec has servers lower-case header names (uvicorn, hypercorn and daphne
    do, and Starlette relies on it), so each name is one comparison; a server that
    sends ``X-Trace-ID`` in another case gets a fresh trace ID.
    """
    trace_header = raw_parent = None
    for name, value in headers:
        if name == b"x-trace-id":
            if trace_header is None:
                trace_header = value.decode("latin-1")
        elif name == b"traceparent" and raw_parent is None:
            raw_parent = value.decode("latin-1")
    if raw_parent is None:  # the common case: at most an X-Trace-ID
        if trace_header is None:
            return None, None, False
        return trace_header, None, VALID_ID.fullmatch(trace_header) is not None
    return _checked(trace_header, raw_parent)


def extract_wsgi(environ: Any) -> tuple[str | None, str | None, bool]:
    """``extract_checked`` for a WSGI environ (``HTTP_X_TRACE_ID``, ``HTTP_TRACEPARENT``)."""
    trace_header = environ.get("HTTP_X_TRACE_ID")
    raw_parent = environ.get("HTTP_TRACEPARENT")
    if raw_parent is None:
        if trace_header is None:
            return None, None, False
        return trace_header, None, VALID_ID.fullmatch(trace_header) is not None
    return _checked(trace_header, raw_parent)


def extract_context(headers: Any) -> tuple[str | None, str | None]:
    """(trace_id, remote parent span ID) from incoming headers.

    Order: a valid ``X-Trace-ID``; else a valid ``traceparent``; else a present
    but invalid ``X-Trace-ID`` (returned as-is so ``use_trace_id`` replaces it
    and logs a warning); else (None, None).
    """
    trace_id, parent, _valid = extract_checked(headers)
    return trace_id, parent


def extract_checked(headers: Any) -> tuple[str | None, str | None, bool]:
    """``extract_context`` plus whether the ID is already known valid (saves a second check)."""
    if type(headers) is list:  # ASGI and WSGI-style pairs: one pass finds both
        trace_header, raw_parent = _scan_pairs(headers)
    else:
        trace_header = get_header(headers, TRACE_HEADER)
        raw_parent = get_header(headers, TRACEPARENT)
    if raw_parent is None:  # the common case: at most an X-Trace-ID
        if trace_header is None:
            return None, None, False
        return trace_header, None, VALID_ID.fullmatch(trace_header) is not None
    return _checked(trace_header, raw_parent)


def _checked(trace_header: str | None, raw_parent: str) -> tuple[str | None, str | None, bool]:
    traceparent = parse_traceparent(raw_parent)
    if trace_header is not None and is_valid_trace_id(trace_header):
        parent = traceparent[1] if traceparent and traceparent[0] == trace_header else None
        return trace_header, parent, True
    if traceparent is not None:
        return traceparent[0], traceparent[1], True
    return trace_header, None, False


def extract_trace_id(headers: Any) -> str | None:
    """The trace ID carried by incoming headers (``X-Trace-ID``, then ``traceparent``), or None."""
    return extract_context(headers)[0]


def incoming_trace(trace_id: str | None, parent: str | None) -> TraceContext:
    """The trace a request continues: its valid ID, else a fresh one (a rejected ID is logged)."""
    return TraceContext(accept_trace_id(trace_id) if trace_id is not None else new_trace_id(),
                        parent)


def traceparent(trace_id: str, span_id: str | None) -> str:
    """The ``traceparent`` sent for a W3C trace ID: its span, or a fresh one (sampled)."""
    return f"00-{trace_id}-{span_id or new_span_id()}-01"


def headers_for(ctx: TraceContext) -> list[tuple[str, str]]:
    """``X-Trace-ID`` and, for a W3C-shaped ID, ``traceparent`` for this trace context."""
    trace_id = ctx.trace_id
    if is_w3c_trace_id(trace_id):
        return [(TRACE_HEADER, trace_id), (TRACEPARENT, traceparent(trace_id, ctx.span_id))]
    return [(TRACE_HEADER, trace_id)]


def parse_tracestate(value: str | None) -> str | None:
    """An incoming ``tracestate`` to pass on untouched, or None when it is missing or not
    what W3C allows (too long, too many list-members, a member without ``=``, not printable
    ASCII): the spec lets a receiver drop a tracestate it cannot parse, never alter it."""
    if not value or len(value) > _MAX_TRACESTATE or _PRINTABLE.fullmatch(value) is None:
        return None
    members = [m.strip() for m in value.split(",") if m.strip()]
    if not members or len(members) > _TRACESTATE_MEMBERS or not all("=" in m for m in members):
        return None
    return value


def read_tracestate(headers: Any) -> str | None:
    """``parse_tracestate`` of the ``tracestate`` header, from pairs, a mapping or a WSGI
    environ (read only for a request that continues a ``traceparent``)."""
    if isinstance(headers, dict) and "wsgi.version" in headers:
        raw = headers.get("HTTP_TRACESTATE")
    else:
        raw = get_header(headers, TRACESTATE)
    return parse_tracestate(raw if isinstance(raw, str) else None)


def outbound_headers(ctx: TraceContext) -> list[tuple[str, str]]:
    """``headers_for(ctx)`` for a request this trace makes, plus the served request's
    ``tracestate`` while the trace is the one its ``traceparent`` carried."""
    headers = headers_for(ctx)
    request = ctx.request
    if request is not None and (state := getattr(request, "tracestate", None)) is not None \
            and request.trace_id == ctx.trace_id and len(headers) == 2:
        headers.append((TRACESTATE, state))
    return headers


def trace_headers() -> list[tuple[str, str]]:
    """The outgoing headers for the current trace (none outside a trace)."""
    ctx = trace_context.get()
    return [] if ctx is None else outbound_headers(ctx)


def inject_headers(headers: H) -> H:
    """Add the current trace's headers to ``headers`` (dict, list of pairs, or a framework type).

    Returns the same object. Outside a trace it adds nothing.
    """
    pairs = trace_headers()
    if not pairs:
        return headers
    if isinstance(headers, list):
        as_bytes = any(isinstance(p[0], bytes) for p in headers)
        names = {n.lower() for n, _ in pairs}
        headers[:] = [p for p in headers
                      if (p[0].decode("latin-1") if isinstance(p[0], bytes) else p[0]).lower()
                      not in names]
        for name, value in pairs:
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1"))
                           if as_bytes else (name, value))
        return headers
    if isinstance(headers, dict):
        for name, value in pairs:
            for key in [k for k in headers if isinstance(k, str) and k.lower() == name.lower()]:
                del headers[key]
            headers[name] = value
        return headers
    for name, value in pairs:  # case-insensitive framework types replace on assignment
        headers[name] = value  # type: ignore[index]
    return headers
