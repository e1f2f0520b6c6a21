"""The request observers: one for served requests (made by ``instrument._gate``), one for
outbound calls. Everything measured, labelled and logged about an HTTP request is
decided here, once; adapters only translate their framework's hooks into these calls.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from time import perf_counter
from typing import Any, Protocol

from instrument import _metrics, _observe
from instrument._context import (
    TraceContext,
    accept_trace_id,
    is_w3c_trace_id,
    make_context,
    new_trace_id,
    trace_context,
)
from instrument._engine import CANCELLED, ERROR, OK
from instrument._loggate import emit, log_enabled
from instrument._propagation import (
    TRACE_HEADER,
    TRACEPARENT,
    extract_checked,
    read_tracestate,
    trace_headers,
    traceparent,
)
from instrument._served import Series
from instrument._sse import SSEStream

UNMATCHED = "__unmatched__"
CLIENT_CLOSED = 499


class StreamObserver(Protocol):
    """What a ``@track_sse`` stream exposes to the request that serves it."""

    def client_disconnected(self) -> None: ...

    def server_cancelled(self) -> None: ...

    def abandoned(self) -> None: ...


Extract = Callable[[Any], tuple[str | None, str | None, bool]]
#: the client's address: ASGI's (host, port), a formatted string, or None (not known)
Client = tuple[Any, Any] | str | None


class ServerRequest:
    """One served HTTP request: trace in and out, metrics, access log.

    The request gate (``instrument._gate``) makes it; the adapter then calls
    ``enter()`` to bind the trace (``exit(token)`` in the same context),
    ``set_route()`` as soon as the route template is known, ``response_started()``
    with ``response_headers()`` on the way out, ``body_sent()`` per chunk, and
    ``finish()`` once the body has ended or the client left (idempotent);
    ``client_disconnected()`` and ``failed()`` whenever those happen.
    """

    __slots__ = ("_fallback", "_otel", "_sse_start", "_w3c", "access_log", "bytes_sent", "client",
                 "disconnected", "error", "finished", "method", "metrics", "path", "route",
                 "series", "server_cancelled", "span_id", "sse", "start", "status", "streams",
                 "trace_id", "tracestate")
    _otel: Any  # set only by the OpenTelemetry bridge (instrument._otel)

    def __init__(self, method: str, path: str, headers: Any, client: Client = None,
                 access_log: bool = True, metrics: _metrics.Metrics | None = None,
                 extract: Extract = extract_checked) -> None:
        """``extract`` reads the trace from ``headers``: ``extract_asgi`` for ASGI's."""
        self.start = perf_counter()
        self.metrics = metrics or _metrics.configured or _metrics.current()
        self.method = method
        self.path = path
        self.client = client  # formatted only for an access line that is written
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
        if parent is not None:  # a traceparent continued: its tracestate goes on with it
            self.tracestate = read_tracestate(headers)
        self._w3c = w3c  # whether a traceparent goes back
        # no trace counted here: the request's series counts it as it ends
        self.route: str | None = None
        self.status: int | None = None
        self.bytes_sent = 0
        self.sse = False
        self.streams: list[StreamObserver] | None = None  # most requests have none
        self.disconnected = False
        self.server_cancelled = False
        self.error: BaseException | None = None
        self.finished = False
        self.series: Series | None = None  # bound once routed (see set_route)
        self._fallback: SSEStream | None = None  # an SSE body no @track_sse stream measures
        if _observe.bridge is not None:
            _observe.bridge.request(self)

    # -- the trace -----------------------------------------------------------------------
    def enter(self) -> Token[TraceContext | None]:
        """Make this request's trace current; undo with ``exit(token)`` in the same context."""
        return trace_context.set(make_context((self.trace_id, self.span_id, None, self)))

    @staticmethod
    def exit(token: Token[TraceContext | None]) -> None:
        try:
            trace_context.reset(token)
        except ValueError:  # entered in another context: nothing left to restore there
            pass

    def response_headers(self) -> list[tuple[str, str]]:
        """``X-Trace-ID`` (and ``traceparent``) to add to the response."""
        if not self._w3c:
            return [(TRACE_HEADER, self.trace_id)]
        return [(TRACE_HEADER, self.trace_id), (TRACEPARENT, traceparent(self.trace_id,
                                                                          self.span_id))]

    def raw_response_headers(self) -> list[tuple[bytes, bytes]]:
        """``response_headers`` as ASGI wants them: lower-case names, latin-1 bytes."""
        trace_id = self.trace_id.encode("latin-1")  # validated: ASCII
        if not self._w3c:
            return [(b"x-trace-id", trace_id)]
        return [(b"x-trace-id", trace_id),
                (b"traceparent", traceparent(self.trace_id, self.span_id).encode("latin-1"))]

    # -- lifecycle ---------------------------------------------------------------
    def set_route(self, route: str | None) -> None:
        """Record the route template once known; from then on the request is in progress."""
        if self.route is None:
            self.route = route or UNMATCHED
            try:
                served, key = self.metrics.served, (self.method, self.route)
                # bound once, in routing order: labels past max_label_values go to 'other'.
                # (series()'s own first lookup inlined: this runs once per request)
                self.series = served.known.get(key) or served.series(*key)
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
        elif self.server_cancelled:
            stream.server_cancelled()

    def response_started(self, status: int, sse: bool = False) -> None:
        """The status line is out; ``sse`` for a ``text/event-stream`` body."""
        self.status = status
        if sse:
            self.sse = True
            self._sse_start = perf_counter()

    def body_sent(self, chunk: bytes | bytearray | memoryview | str) -> None:
        self.bytes_sent += len(chunk)
        if self.sse and chunk and not self.streams:  # a plain SSE body: events counted here
            stream = self._fallback or self._plain_stream()
            data = (chunk if type(chunk) is bytes else chunk.encode() if isinstance(chunk, str)
                    else bytes(chunk))
            # an event is a block; one starting with ':' is a comment (a heartbeat)
            for block in data.split(b"\n\n"):
                if block.strip():
                    stream.item(block)

    def _plain_stream(self) -> SSEStream:
        """Measure an SSE body no ``@track_sse`` stream measures as a stream of its own, from
        its response's start. Opened with its first chunk (or at the end, if it sent none):
        a ``@track_sse`` generator the body starts lazily has attached by then."""
        token = self.enter()
        try:
            stream = self._fallback = SSEStream(self.metrics, self.route or UNMATCHED, None,
                                                attach=False)
        finally:
            self.exit(token)
        stream.start = self._sse_start
        return stream

    def client_disconnected(self) -> None:
        """The client went away before the response completed: tell the streams first."""
        if not self.disconnected:
            self.disconnected = True
            for stream in self.streams or ():
                try:
                    stream.client_disconnected()
                except Exception as exc:
                    _metrics.report_internal_error("sse_disconnect", exc)

    def cancelled(self) -> None:
        """The server cancelled the request (shutting down, say) with no sign that the client
        left: counted like a hang-up (499, or an event stream's sent status), but its streams
        end ``cancelled``, not ``client_disconnect``."""
        if not (self.server_cancelled or self.disconnected):
            self.server_cancelled = True
            self.server_stopping()

    def server_stopping(self) -> None:
        """The server has begun cutting its responses short (its shutdown): tell the streams,
        so one its consumer drops from now on ends ``cancelled``. The request itself is
        recorded as it ends."""
        for stream in self.streams or ():
            try:
                stream.server_cancelled()
            except Exception as exc:
                _metrics.report_internal_error("sse_cancel", exc)

    def end_streams(self) -> None:
        """The response is over (the app returned or its task ended): a ``@track_sse`` stream
        still open can send nothing more (its body was dropped mid-send), so it ends now, not
        whenever it is collected. Its own end, if it came first, stands."""
        for stream in self.streams or ():
            try:
                stream.abandoned()
            except Exception as exc:
                _metrics.report_internal_error("sse_abandoned", exc)

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        if self.finished and not self.disconnected:
            # Raised after the response was recorded (a background task): the
            # request keeps its status, but the exception is still logged once.
            if not log_enabled(40):
                return
            token = self.enter()
            try:
                emit("ERROR", f"unhandled exception after the response to {self.method} "
                     f"{self.path}", {"event": "unhandled_exception", "method": self.method,
                                      "route": self.route or UNMATCHED, "path": self.path,
                                      "after_response": True}, exc)
            except Exception as err:
                _metrics.report_internal_error("http_late_error", err)
            finally:
                self.exit(token)

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
            series = self.series or served.series(self.method, route)  # routed, or not
            status = self.status
            if (self.disconnected or self.server_cancelled) and (status is None
                                                                  or not self.sse):
                status = CLIENT_CLOSED
            elif status is None:
                status = 500
            failed = self.error is not None and not self.disconnected
            series.done(status, None if self.sse else elapsed, self.trace_id, end)
            if (status >= 500 and status != CLIENT_CLOSED) or failed:
                self.metrics.http_errors.child(self.method, route, str(status)).inc()
            if self.sse and not self.streams:
                self._end_fallback()
            log_error = failed and log_enabled(40)
            log_access = self.access_log and log_enabled(20)
            if log_error or log_access:
                self._log(route, status, elapsed, log_error, log_access)
        except Exception as exc:
            _metrics.report_internal_error("http_request", exc)

    def _end_fallback(self) -> None:
        """End the plain SSE body's stream the way ``@track_sse`` ends its own."""
        stream, self._fallback = self._fallback or self._plain_stream(), None
        if self.disconnected:
            stream.client_disconnected()
            stream.end(CANCELLED, None)
        elif self.error is not None:
            stream.end(ERROR, self.error)
        elif self.server_cancelled:
            stream.end(CANCELLED, None)
        else:
            stream.end(OK, None)

    def _log(self, route: str, status: int, elapsed: float, log_error: bool,
             log_access: bool) -> None:
        """The request's lines that ``finish`` found wanted (each level checked once there)."""
        method, trace_id, span_id = self.method, self.trace_id, self.span_id
        if log_error:
            emit("ERROR", f"unhandled exception while serving {method} {self.path}", {
                "event": "unhandled_exception", "method": method, "route": route,
                "path": self.path, "trace_id": trace_id, "span_id": span_id}, self.error)
        if log_access:
            client = self.client
            if client is not None and not isinstance(client, str):
                client = f"{client[0]}:{client[1]}"
            emit("INFO", f"{method} {self.path} {status}", {
                "event": "request", "method": method, "route": route, "path": self.path,
                "status": status, "latency_ms": round(elapsed * 1000, 3),
                "bytes": self.bytes_sent, "client": client, "trace_id": trace_id,
                "span_id": span_id})


def host_label(host: str, port: int | None) -> str:
    """A client request's ``host`` label: ``host``, or ``host:port`` when ``port`` is not the
    scheme's default (None); an IPv6 address goes in brackets."""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClientRequest:
    """One outbound HTTP request: trace headers out, client metrics in."""

    __slots__ = ("finished", "host", "method", "metrics", "start")

    def __init__(self, method: str, host: str, metrics: _metrics.Metrics | None = None) -> None:
        self.metrics = metrics or _metrics.configured or _metrics.current()
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
