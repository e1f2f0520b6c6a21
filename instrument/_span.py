"""Spans: ``trace_span`` as a context manager (sync and async) and as a decorator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import Token
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar

from instrument import _metrics, _observe
from instrument._context import (
    TraceContext,
    accept_trace_id,
    new_span_id,
    new_trace_id,
    trace_context,
)
from instrument._engine import STATUS, instrument_callable, status_of
from instrument._loggate import emit
from instrument._observe import TracedObserver, log_enabled

F = TypeVar("F", bound=Callable[..., Any])


class Span:
    """One timed unit of work inside a trace."""

    __slots__ = ("_otel", "attributes", "name", "parent_span_id", "span_id", "start", "trace_id")
    _otel: Any  # set only by the OpenTelemetry bridge (instrument._otel)

    def __init__(self, name: str, trace_id: str, span_id: str, parent_span_id: str | None,
                 attributes: dict[str, Any]) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.attributes = attributes
        self.start = perf_counter()

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def _close(self, token: Token[TraceContext | None], exc: BaseException | None,
               metrics: _metrics.Metrics | None = None) -> float:
        """Record the span and restore the context that was current before it opened."""
        duration = perf_counter() - self.start
        try:
            record_span(metrics, self.name, duration, exc, status_of(exc), self.trace_id,
                        self.span_id, self.parent_span_id, self.attributes)
        finally:
            try:
                trace_context.reset(token)
            except ValueError:
                # closed in another context (e.g. a generator finalised by the GC):
                # that context is gone, so there is nothing to restore
                pass
        return duration

    def __repr__(self) -> str:
        return (f"Span(name={self.name!r}, trace_id={self.trace_id!r}, span_id={self.span_id!r}, "
                f"parent_span_id={self.parent_span_id!r})")


def open_span(name: str, attributes: dict[str, Any]) -> tuple[Span, Token[TraceContext | None]]:
    """Start a span under the current one (or a new trace) and make it current."""
    ctx = trace_context.get()
    if ctx is None:
        trace_id, parent, usage, request = new_trace_id(), None, None, None
        _metrics.count_trace()
    else:
        trace_id, parent, usage, request = ctx
    span = Span(name, trace_id, new_span_id(), parent, attributes)
    return span, trace_context.set(TraceContext(trace_id, span.span_id, usage, request))


def record_span(metrics: _metrics.Metrics | None, name: str, duration: float,
                exc: BaseException | None, outcome: str, trace_id: str, span_id: str,
                parent_span_id: str | None, attributes: dict[str, Any]) -> None:
    """Observe a closed span (duration with its trace as exemplar, errors) and log it at DEBUG."""
    try:
        m = metrics or _metrics.current()
        m.span_duration.child(name).observe_trace(duration, trace_id)
        if outcome == "error":
            m.span_errors.child(name).inc()
        if log_enabled(10):
            emit("DEBUG", f"span {name} {outcome}", {
                "event": "span", "span": name, "duration_ms": round(duration * 1000, 3),
                "outcome": outcome, "error_type": type(exc).__name__ if exc else None,
                "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent_span_id,
                "attributes": attributes})
    except Exception as err:
        _metrics.report_internal_error("span", err)


def close_span(span: Span, token: Token[TraceContext | None], exc: BaseException | None,
               metrics: _metrics.Metrics | None = None) -> float:
    """Record the span and restore the context that was current before it opened."""
    return span._close(token, exc, metrics)


class SpanCall(TracedObserver):
    """``@trace_span`` on any kind of callable: one span per call, current at each step."""

    __slots__ = ("attributes", "name")

    def __init__(self, metrics: _metrics.Metrics, name: str, attributes: dict[str, Any]) -> None:
        super().__init__(metrics)
        self.name = name
        self.attributes = attributes
        if _observe.bridge is not None:
            _observe.bridge.start(self)

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        record_span(self.metrics, self.name, perf_counter() - self.start, exc,
                    STATUS[outcome], self.trace.trace_id, self.trace.span_id or "",
                    self.parent_span_id, self.attributes)


class SpanContext:
    """What ``trace_span(...)`` returns: a context manager (sync/async) and a decorator."""

    __slots__ = ("_attributes", "_name", "_span", "_token")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self._name = name
        self._attributes = attributes
        self._span: Span | None = None
        self._token: Token[TraceContext | None] | None = None

    def __enter__(self) -> Span:
        if self._span is not None:
            raise RuntimeError("a trace_span(...) object is not re-entrant; create a new one")
        self._span, self._token = open_span(self._name, dict(self._attributes))
        if _observe.bridge is not None:
            _observe.bridge.opened(self)
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        span, token = self._span, self._token
        self._span = self._token = None
        if span is not None and token is not None:
            span._close(token, exc)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        """Use as a decorator on a function, coroutine or (async) generator function.

        Each call runs in a fresh span of this name; for a generator the span
        lasts until the generator ends and is current at each of its steps.
        """
        name, attributes = self._name, self._attributes

        def start(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SpanCall:
            return SpanCall(_metrics.current(), name, dict(attributes))

        return instrument_callable(fn, start)


def trace_span(name: str, /, **attributes: Any) -> SpanContext:
    """Open a span: ``with trace_span("retrieve", k=5) as span:`` or ``@trace_span("retrieve")``.

    A span opened inside another is its child in the same trace; opened outside
    any trace, it starts a new one. On close, its duration goes to
    ``span_duration_seconds{span}`` (with a trace-ID exemplar) and a DEBUG log line.
    """
    return SpanContext(name, attributes)


@contextmanager
def use_trace_id(trace_id: object, parent_span_id: str | None = None) -> Iterator[str]:
    """Bind an externally supplied trace ID for the body; yields the ID actually used.

    An invalid ID (empty, too long, spaces, newlines, non-ASCII) never raises:
    it is replaced by a fresh one and a warning is logged with the value escaped.
    """
    accepted = accept_trace_id(trace_id)
    _metrics.count_trace()
    outer = trace_context.get()  # still serving the same request, if any
    token = trace_context.set(TraceContext(accepted, parent_span_id, None,
                                      outer.request if outer is not None else None))
    try:
        yield accepted
    finally:
        trace_context.reset(token)
