"""The request observers every adapter drives: one for served requests, one for outbound calls.

Adapters translate their framework's hooks into these few calls; everything
measured, labelled and logged about an HTTP request is decided here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from time import perf_counter
from typing import Any, Protocol

from instrument import _metrics
from instrument._context import (
    TraceContext,
    _current,
    accept_trace_id,
    is_w3c_trace_id,
    make_context,
    new_span_id,
    new_trace_id,
)
from instrument._loggate import emit, log_enabled
from instrument._propagation import TRACE_HEADER, TRACEPARENT, extract_checked, trace_headers
from instrument._served import Series

UNMATCHED = "__unmatched__"
CLIENT_CLOSED = 499


class StreamObserver(Protocol):
    """What a ``@track_sse`` stream exposes to the request that serves it."""

    def client_disconnected(self) -> None: ...


Extract = Callable[[Any], tuple[str | None, str | None, bool]]


def current_request() -> ServerRequest | None:
    """The request served in this context: it rides on the one trace context variable
    (``TraceContext.request``), so serving a request sets a single context variable."""
    ctx = _current.get()
    return ctx.request if ctx is not None else None


class ServerRequest:
    """One served HTTP request: trace in and out, metrics, access log.

    Call order: bind the trace (``enter()``, or an adapter sets
    ``TraceContext(..., request=self)`` itself), ``set_route()`` as soon as the
    route template is known, ``response_started()``, ``body_sent()`` per chunk,
    ``finish()`` exactly once when the body has ended (or the client left), then
    unbind (``exit()``). ``finish`` is idempotent.
    """

    __slots__ = ("_series", "_stream_start", "_token", "_w3c", "access_log", "bytes_sent",
                 "client", "disconnected", "error", "finished", "method", "metrics", "path",
                 "route", "span_id", "sse", "sse_events", "start", "status", "streams",
                 "trace_id")

    def __init__(self, method: str, path: str, headers: Any, client: str | None = None,
                 access_log: bool = True, metrics: _metrics.Metrics | None = None,
                 extract: Extract = extract_checked) -> None:
        """``extract`` reads the trace from ``headers``: ``extract_asgi`` for ASGI's."""
        self.start = perf_counter()
        self.metrics = metrics or _metrics._current_metrics or _metrics.current()
        self.method = method
        self.path = path
        self.client = client
        self.access_log = access_log
        try:
            trace_id, parent, valid = extract(headers)
        except Exception as exc:  # headers not as the server's spec says: a fresh trace
            _metrics.report_internal_error("trace_extract", exc)
            trace_id, parent, valid = None, None, False
        if trace_id is None:
            trace_id, w3c = new_trace_id(), True
        else:
            if not valid:
                trace_id = accept_trace_id(trace_id)
            w3c = len(trace_id) == 32 and is_w3c_trace_id(trace_id)  # a length test, mostly
        self.trace_id = trace_id
        self.span_id = parent  # the remote parent span, if the caller sent one
        self._w3c = w3c  # whether a traceparent goes back
        # no trace counted here: the request's series counts it as it ends
        self.route: str | None = None
        self.status: int | None = None
        self.bytes_sent = 0
        self.sse = False
        self.sse_events = 0
        self.streams: list[StreamObserver] | None = None  # most requests have none
        self.disconnected = False
        self.error: BaseException | None = None
        self.finished = False
        self._stream_start = 0.0  # > 0 once an SSE response is measured here
        self._token: Token[TraceContext | None] | None = None
        self._series: Series | None = None  # bound once routed (see set_route)

    @property
    def trace(self) -> TraceContext:
        """This request's trace context (what ``enter`` makes current)."""
        return make_context((self.trace_id, self.span_id, None, self))

    # -- context ---------------------------------------------------------------
    def enter(self) -> None:
        """Make this request's trace current (undo with ``exit`` in the same context)."""
        self._token = _current.set(make_context((self.trace_id, self.span_id, None, self)))

    def exit(self) -> None:
        token = self._token
        if token is not None:
            self._token = None
            try:
                _current.reset(token)
            except ValueError:  # reset from another context: nothing left to restore
                pass

    def _traceparent(self) -> str:
        """The ``traceparent`` to send back (for a W3C-shaped trace ID)."""
        return f"00-{self.trace_id}-{self.span_id or new_span_id()}-01"

    def response_headers(self) -> list[tuple[str, str]]:
        """``X-Trace-ID`` (and ``traceparent``) to add to the response."""
        if not self._w3c:
            return [(TRACE_HEADER, self.trace_id)]
        return [(TRACE_HEADER, self.trace_id), (TRACEPARENT, self._traceparent())]

    def raw_response_headers(self) -> list[tuple[bytes, bytes]]:
        """``response_headers`` as ASGI wants them: lower-case names, latin-1 bytes."""
        trace_id = self.trace_id.encode("latin-1")  # validated: ASCII
        if not self._w3c:
            return [(b"x-trace-id", trace_id)]
        return [(b"x-trace-id", trace_id), (b"traceparent", self._traceparent().encode("latin-1"))]

    # -- lifecycle ---------------------------------------------------------------
    def set_route(self, route: str | None) -> None:
        """Record the route template once known; from then on the request is in progress."""
        if self.route is None:
            self.route = route or UNMATCHED
            try:
                served, key = self.metrics.served, (self.method, self.route)
                # bound once, in routing order: labels past max_label_values go to 'other'.
                # (series()'s own first lookup inlined: this runs once per request)
                self._series = served.known.get(key) or served.series(*key)
                served.active.add(self)  # finish() takes it out
            except Exception as exc:
                _metrics.report_internal_error("http_in_progress", exc)

    def attach_stream(self, stream: StreamObserver) -> None:
        """A ``@track_sse`` stream opened while serving this request (it measures itself)."""
        if self.streams is None:
            self.streams = []
        self.streams.append(stream)
        if self.disconnected:
            stream.client_disconnected()

    def response_started(self, status: int, content_type: str | None = None) -> None:
        self.status = status
        if content_type and content_type.startswith("text/event-stream"):
            self.sse = True
            if not self.streams:
                self._open_fallback_stream()

    def body_sent(self, chunk: bytes | str) -> None:
        self.bytes_sent += len(chunk)
        if self.sse and not self.streams and chunk:
            data = chunk if isinstance(chunk, bytes) else chunk.encode()
            # an event is a block not starting with ':' (that is a comment/heartbeat)
            self.sse_events += sum(1 for block in data.split(b"\n\n")
                                   if block.strip() and not block.startswith(b":"))

    def client_disconnected(self) -> None:
        """The client went away before the response completed: tell the streams first."""
        if not self.disconnected:
            self.disconnected = True
            for stream in self.streams or ():
                try:
                    stream.client_disconnected()
                except Exception as exc:
                    _metrics.report_internal_error("sse_disconnect", exc)

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        if self.finished and not self.disconnected:
            # Raised after the response was recorded (a background task): the
            # request keeps its status, but the exception is still logged once.
            if not log_enabled(40):
                return
            token = _current.set(self.trace)
            try:
                emit("ERROR", f"unhandled exception after the response to {self.method} "
                     f"{self.path}", {"event": "unhandled_exception", "method": self.method,
                                      "route": self.route or UNMATCHED, "path": self.path,
                                      "after_response": True}, exc)
            except Exception as err:
                _metrics.report_internal_error("http_late_error", err)
            finally:
                _current.reset(token)

    def finish(self) -> None:
        """Record the request once: counters, duration (not for SSE), in-progress, access log."""
        if self.finished:
            return
        self.finished = True
        end = perf_counter()
        elapsed = end - self.start
        try:
            served = self.metrics.served
            served.active.discard(self)  # if it was in progress
            route = self.route or UNMATCHED
            series = self._series or served.series(self.method, route)  # routed, or not
            status = self.status
            if self.disconnected and (status is None or not self.sse):
                status = CLIENT_CLOSED
            elif status is None:
                status = 500
            failed = self.error is not None and not self.disconnected
            series.done(status, None if self.sse else elapsed, self.trace_id, end)
            if (status >= 500 and status != CLIENT_CLOSED) or failed:
                self.metrics.http_errors.child(self.method, route, str(status)).inc()
            if self._stream_start:
                self._close_fallback_stream()
            log_error = failed and log_enabled(40)
            log_access = self.access_log and log_enabled(20)
            if log_error or log_access:
                self._log(route, status, elapsed, log_error, log_access)
        except Exception as exc:
            _metrics.report_internal_error("http_request", exc)

    def _log(self, route: str, status: int, elapsed: float, log_error: bool,
             log_access: bool) -> None:
        """The request's lines that ``finish`` found wanted (each level checked once there)."""
        method, trace_id, span_id = self.method, self.trace_id, self.span_id
        if log_error:
            emit("ERROR", f"unhandled exception while serving {method} {self.path}", {
                "event": "unhandled_exception", "method": method, "route": route,
                "path": self.path, "trace_id": trace_id, "span_id": span_id}, self.error)
        if log_access:
            emit("INFO", f"{method} {self.path} {status}", {
                "event": "request", "method": method, "route": route, "path": self.path,
                "status": status, "latency_ms": round(elapsed * 1000, 3),
                "bytes": self.bytes_sent, "client": self.client, "trace_id": trace_id,
                "span_id": span_id})

    # -- SSE responses not produced by a @track_sse generator ------------------------
    def _open_fallback_stream(self) -> None:
        endpoint = self.route or UNMATCHED
        self._stream_start = perf_counter()
        self.metrics.sse_connections.child(endpoint).inc()
        self.metrics.sse_active.child(endpoint).inc()

    def _close_fallback_stream(self) -> None:
        m = self.metrics
        endpoint = self.route or UNMATCHED
        if self.disconnected:
            outcome = "client_disconnect"
        elif self.error is not None:
            outcome = "error"
        else:
            outcome = "completed"
        m.sse_active.child(endpoint).dec()
        m.sse_duration.child(endpoint).observe_trace(perf_counter() - self._stream_start,
                                                     self.trace_id)
        if self.sse_events:
            m.sse_events.child(endpoint).inc(self.sse_events)
        m.sse_closed.child(endpoint, outcome).inc()


class ClientRequest:
    """One outbound HTTP request: trace headers out, client metrics in."""

    __slots__ = ("finished", "host", "method", "metrics", "start")

    def __init__(self, method: str, host: str, metrics: _metrics.Metrics | None = None) -> None:
        self.metrics = metrics or _metrics.current()
        self.method = method
        self.host = host
        self.start = perf_counter()
        self.finished = False

    @staticmethod
    def headers() -> list[tuple[str, str]]:
        return trace_headers()

    def finish(self, status: int | None, exc: BaseException | None = None) -> float:
        """Record once; ``status=None`` with ``exc`` means the request failed without a response."""
        elapsed = perf_counter() - self.start
        if self.finished:
            return elapsed
        self.finished = True
        try:
            m = self.metrics
            label = str(status) if status is not None else (
                "error" if exc is None else type(exc).__name__)
            m.client_requests.child(self.host, self.method, label).inc()
            m.client_duration.child(self.host, self.method).observe_current(elapsed)
        except Exception as err:
            _metrics.report_internal_error("http_client", err)
        return elapsed
