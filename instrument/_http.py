"""The request observers every adapter drives: one for served requests, one for outbound calls.

Adapters translate their framework's hooks into these few calls; everything
measured, labelled and logged about an HTTP request is decided here, once.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from time import perf_counter
from typing import Any, Protocol

from loguru import logger

from instrument import _metrics
from instrument._context import TraceContext, _current, accept_trace_id, new_trace_id
from instrument._propagation import extract_checked, headers_for, trace_headers

UNMATCHED = "__unmatched__"
CLIENT_CLOSED = 499


class StreamObserver(Protocol):
    """What a ``@track_sse`` stream exposes to the request that serves it."""

    def client_disconnected(self) -> None: ...


current_request: ContextVar[ServerRequest | None] = ContextVar("instrument_request",
                                                               default=None)


class ServerRequest:
    """One served HTTP request: trace in and out, metrics, access log.

    Call order: ``enter()`` (binds the trace), ``set_route()`` as soon as the
    route template is known, ``response_started()``, ``body_sent()`` per chunk,
    ``finish()`` exactly once when the body has ended (or the client left), then
    ``exit()``. ``finish`` is idempotent.
    """

    # Per-request state that most requests never change lives in class attributes:
    # an instance writes only what differs (no __slots__, so these defaults apply).
    route: str | None = None
    status: int | None = None
    bytes_sent = 0
    sse = False
    sse_events = 0
    streams: list[StreamObserver] | None = None  # most requests have none
    disconnected = False
    error: BaseException | None = None
    finished = False
    _series: RouteSeries | None = None
    _stream_start = 0.0  # > 0 once an SSE response is measured here
    _token: tuple[Token[TraceContext | None], Token[ServerRequest | None]] | None = None

    def __init__(self, method: str, path: str, headers: Any, client: str | None = None,
                 access_log: bool = True, metrics: _metrics.Metrics | None = None) -> None:
        self.start = perf_counter()
        m = self.metrics = metrics or _metrics.current()
        self.method = method
        self.path = path
        self.client = client
        self.access_log = access_log
        trace_id, parent, valid = extract_checked(headers)
        if trace_id is None:
            trace_id = new_trace_id()
        elif not valid:
            trace_id = accept_trace_id(trace_id)
        self.trace = TraceContext(trace_id, parent)
        m.traces.inc()

    # -- context ---------------------------------------------------------------
    def enter(self) -> None:
        """Make this request's trace current (undo with ``exit`` in the same context)."""
        self._token = (_current.set(self.trace), current_request.set(self))

    def exit(self) -> None:
        if self._token is not None:
            trace_token, request_token = self._token
            self._token = None
            try:
                current_request.reset(request_token)
                _current.reset(trace_token)
            except ValueError:  # reset from another context: nothing left to restore
                pass

    def response_headers(self) -> list[tuple[str, str]]:
        """``X-Trace-ID`` (and ``traceparent``) to add to the response."""
        return headers_for(self.trace)

    # -- lifecycle ---------------------------------------------------------------
    def set_route(self, route: str | None) -> None:
        """Record the route template once known; from then on the request is in progress."""
        if self.route is None:
            self.route = route or UNMATCHED
            try:
                series = route_series(self.metrics, self.method, self.route)
                series.in_progress.inc()
                self._series = series  # set once counted in progress: finish() undoes it
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
            token = _current.set(self.trace)
            try:
                logger.bind(event="unhandled_exception", method=self.method,
                            route=self.route or UNMATCHED, path=self.path,
                            after_response=True).opt(exception=exc).error(
                    "unhandled exception after the response to {method} {path}",
                    method=self.method, path=self.path)
            except Exception as err:
                _metrics.report_internal_error("http_late_error", err)
            finally:
                _current.reset(token)

    def finish(self) -> None:
        """Record the request once: counters, duration (not for SSE), in-progress, access log."""
        if self.finished:
            return
        self.finished = True
        elapsed = perf_counter() - self.start
        try:
            self._record(elapsed)
        except Exception as exc:
            _metrics.report_internal_error("http_request", exc)

    def _record(self, elapsed: float) -> None:
        m, method, trace = self.metrics, self.method, self.trace
        if self.route is None:
            self.set_route(None)
        route = self.route or UNMATCHED
        if self._series is not None:
            self._series.in_progress.dec()
        if self.disconnected and (self.status is None or not self.sse):
            status = CLIENT_CLOSED
        elif self.error is not None and self.status is None:
            status = 500
        else:
            status = self.status or 500
        series = self._series or route_series(m, method, route)
        if status == 200:
            if series.ok is None:
                series.ok = m.http_requests.child(method, route, "200")
            series.ok.inc()
        else:
            m.http_requests.child(method, route, str(status)).inc()
        failed = self.error is not None and not self.disconnected
        if (status >= 500 and status != CLIENT_CLOSED) or failed:
            m.http_errors.child(method, route, str(status)).inc()
        if self._stream_start:
            self._close_fallback_stream()
        elif not self.sse:
            if series.duration is None:
                series.duration = m.http_duration.child(method, route)
            series.duration.observe_trace(elapsed, trace.trace_id)
        if failed:
            logger.bind(event="unhandled_exception", method=method, route=route,
                        path=self.path, trace_id=trace.trace_id, span_id=trace.span_id).opt(
                exception=self.error).error("unhandled exception while serving {method} {path}",
                                            method=method, path=self.path)
        if self.access_log:
            logger.bind(event="request", method=method, route=route, path=self.path,
                        status=status, latency_ms=round(elapsed * 1000, 3),
                        bytes=self.bytes_sent, client=self.client, trace_id=trace.trace_id,
                        span_id=trace.span_id).info(
                "{method} {path} {status}", method=method, path=self.path, status=status)

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
                                                     self.trace.trace_id)
        if self.sse_events:
            m.sse_events.child(endpoint).inc(self.sse_events)
        m.sse_closed.child(endpoint, outcome).inc()


class RouteSeries:
    """The metric children every request of one (method, route) touches, looked up once."""

    __slots__ = ("duration", "in_progress", "ok")

    def __init__(self, m: _metrics.Metrics, method: str, route: str) -> None:
        self.in_progress = m.http_in_progress.child(method, route)
        # bound on first use, so an SSE-only route shows no empty duration histogram
        self.duration: Any = None
        self.ok: Any = None  # the status-200 counter


# Per metrics object: (method, route) -> RouteSeries. Routes are templates, so the set is
# small; a client sending made-up methods is bounded by the cap (then looked up each time).
_ROUTE_SERIES_CAP = 4096


def route_series(m: _metrics.Metrics, method: str, route: str) -> RouteSeries:
    cache: dict[tuple[str, str], RouteSeries] = m.route_series
    found = cache.get((method, route))
    if found is None:
        found = RouteSeries(m, method, route)
        if len(cache) < _ROUTE_SERIES_CAP:
            cache[(method, route)] = found
    return found


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
