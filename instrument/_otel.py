"""The OpenTelemetry bridge: every span, provider call, SSE stream and served request of the
toolkit is also an OpenTelemetry span, with the same trace ID and span ID.

Imported only by ``instrument.adapters.otel.enable()`` (or ``configure(otel=True)``):
without it nothing imports OpenTelemetry, and the default path pays one ``is not None``
check per observer (``instrument._observe.bridge``).

How the IDs stay equal. An observer starts as it always does, then hands itself to
``Bridge.start``, which starts the OpenTelemetry span through the user's tracer provider
and *adopts its span ID* as the toolkit's own (so any ``IdGenerator`` the user configured
is honoured). The parent is, in order: OpenTelemetry's current span when it is in the
same trace (one of ours, made current at each step, or the user's own span inside one of
ours); else the toolkit's parent span (from ``traceparent`` or ``use_trace_id``), given to
OpenTelemetry as a remote ``NonRecordingSpan``; else none, and the trace's root span gets
the toolkit's trace ID through a wrapper around the SDK tracer's ``IdGenerator`` that
returns it for this one span. A toolkit trace ID that is not 32 hex digits (a free-form
``X-Trace-ID``) maps to a W3C ID derived from it (BLAKE2b, 128 bits: every span and
service seeing the same ID lands in the same OpenTelemetry trace), and each span carries
the original as ``instrument.trace_id``.

How every exit path ends the span exactly once. The engine already ends each observer
exactly once; the bridge switches the observer to a subclass of its own class (no new
slots, so ``__class__`` can be assigned) whose ``end`` also ends the span, and whose
``enter``/``leave`` also make the span current in OpenTelemetry's context around each step.
Nothing of this runs on the default path.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from functools import lru_cache
from time import perf_counter
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from instrument import _metrics, _observe
from instrument import _otel_names as N
from instrument._context import TraceContext, is_w3c_trace_id, trace_context
from instrument._engine import ERROR, OK, STATUS, outcome_for
from instrument._http import UNMATCHED, ServerRequest
from instrument._provider import UNKNOWN_MODEL, ProviderCall, error_type
from instrument._span import Span as ToolkitSpan
from instrument._span import SpanContext as ToolkitSpanContext
from instrument._sse import SSEStream

__all__ = ["Bridge", "disable", "enable", "enabled"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_EMPTY = otel_context.Context()
_HEX16 = frozenset("0123456789abcdef")


@lru_cache(maxsize=1024)
def otel_trace_id(trace_id: str) -> int:
    """The OpenTelemetry trace ID for a toolkit trace ID: itself when W3C-shaped, else 128
    bits of its BLAKE2b digest (never zero)."""
    if len(trace_id) == 32 and is_w3c_trace_id(trace_id):
        return int(trace_id, 16)
    digest = int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=16).digest(), "big")
    return digest or 1


def _span_id(value: str | None) -> int | None:
    """A toolkit span ID as OpenTelemetry's int, None when it is not 16 hex digits (a
    ``use_trace_id(parent_span_id=...)`` the caller made up) or all zeros."""
    if value is None or len(value) != 16 or not _HEX16.issuperset(value):
        return None
    found = int(value, 16)
    return found or None


class _Wanted(threading.local):
    trace_id = 0


_wanted = _Wanted()


class _IdGenerator:
    """Wraps the SDK tracer's ``IdGenerator``: the root span of a toolkit trace gets the
    toolkit's trace ID (set in ``_wanted`` for that one ``start_span`` call); every other
    ID is the user's generator's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_trace_id(self) -> int:
        wanted = _wanted.trace_id
        if wanted:
            _wanted.trace_id = 0
            return wanted
        found: int = self.inner.generate_trace_id()
        return found

    def generate_span_id(self) -> int:
        found: int = self.inner.generate_span_id()
        return found

    def is_trace_id_random(self) -> bool:
        check = getattr(self.inner, "is_trace_id_random", None)
        return bool(check()) if check is not None else False


class _Instruments(NamedTuple):
    """The GenAI metrics' instruments for one meter provider (``Names`` made real)."""

    duration: Any
    first_chunk: Any
    token_usage: Any  # None in the latest set
    counters: tuple[tuple[str, Any], ...]
    token_histograms: tuple[tuple[str, Any], ...]


class _Started:
    """The OpenTelemetry span of one toolkit span, and the context that makes it current."""

    __slots__ = ("attached", "context", "cost", "named", "span")

    def __init__(self, span: Any, context: Any) -> None:
        self.span = span
        self.context = context
        self.named = True  # a provider call's model was known as it started
        self.cost: tuple[float, str | None] | None = None  # a provider call's, once priced
        #: a served request's (toolkit token, OpenTelemetry token) of each ``enter``
        self.attached: list[tuple[Any, Any]] = []


class Bridge:
    """The bridge while it is on: the tracer (and meter) it records with."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None,
                 metrics: bool = True) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._metrics = metrics
        self._lock = threading.Lock()
        self._for: Any = None  # the provider the tracer below came from
        self._tracer: Any = None
        self.names = N.selected()
        self._instruments: Any = None
        self._instruments_for: Any = None
        self._classes: dict[type, type] = {}

    # -- the tracer and meter (the global providers may be set after enable()) -------------
    def tracer(self) -> Any:
        provider = self._tracer_provider or otel_trace.get_tracer_provider()
        if provider is not self._for:
            with self._lock:
                tracer: Any = provider.get_tracer(N.SCOPE)
                ids = getattr(tracer, "id_generator", None)
                if ids is not None and not isinstance(ids, _IdGenerator):
                    tracer.id_generator = _IdGenerator(ids)  # the SDK's Tracer: ours only
                self._tracer, self._for = tracer, provider
        return self._tracer

    def instruments(self) -> Any:
        if not self._metrics:
            return None
        provider = self._meter_provider or otel_metrics.get_meter_provider()
        if provider is not self._instruments_for:
            meter = provider.get_meter(N.SCOPE)
            names = self.names

            def histogram(m: N.Metric) -> Any:
                return meter.create_histogram(m.name, unit=m.unit, description=m.description,
                                              explicit_bucket_boundaries_advisory=list(m.buckets))

            self._instruments = _Instruments(
                histogram(names.duration), histogram(names.time_to_first_chunk),
                histogram(names.token_usage) if names.token_usage else None,
                tuple((field, meter.create_counter(m.name, unit=m.unit,
                                                   description=m.description))
                      for field, m in names.usage_counters),
                tuple((field, histogram(m)) for field, m in names.token_histograms))
            self._instruments_for = provider
        return self._instruments

    # -- starting a span -------------------------------------------------------------------
    def begin(self, name: str, kind: SpanKind, attributes: dict[str, Any], trace_id: str,
              parent_span_id: str | None, fresh: bool) -> tuple[_Started, str, str | None]:
        """Start the OpenTelemetry span of a toolkit span; returns it with the trace and span
        IDs the toolkit span now has (its span ID None when OpenTelemetry made none: a no-op
        provider)."""
        wanted = otel_trace_id(trace_id)
        current = otel_trace.get_current_span().get_span_context()
        parent: Any = None  # OpenTelemetry's current context
        parent_id = current.span_id
        if current.is_valid and (current.trace_id == wanted or fresh):
            if current.trace_id != wanted:  # a new toolkit trace joins OpenTelemetry's
                wanted = current.trace_id
                trace_id = "%032x" % wanted  # noqa: UP031
        elif (remote := _span_id(parent_span_id)) is not None:
            parent_id = remote
            parent = otel_trace.set_span_in_context(NonRecordingSpan(SpanContext(
                wanted, remote, is_remote=True, trace_flags=_SAMPLED)), _EMPTY)
        else:
            parent, parent_id = _EMPTY, 0
            _wanted.trace_id = wanted
        if not is_w3c_trace_id(trace_id):
            attributes[N.TRACE_ID] = trace_id
        try:
            span = self.tracer().start_span(name, context=parent, kind=kind,
                                            attributes=attributes)
        finally:
            _wanted.trace_id = 0
        found = span.get_span_context()
        span_id = None
        if found.is_valid and found.trace_id == wanted and found.span_id != parent_id:
            span_id = "%016x" % found.span_id  # noqa: UP031
        return _Started(span, otel_trace.set_span_in_context(span)), trace_id, span_id

    def start(self, obs: Any) -> None:
        """An observer has started (``SpanCall``, ``ProviderCall``, ``SSEStream``)."""
        try:
            trace = obs.trace
            if isinstance(obs, ProviderCall):
                name, kind, attributes = self._provider_start(obs)
            elif isinstance(obs, SSEStream):
                name, kind = f"sse {obs.endpoint}", SpanKind.INTERNAL
                attributes = {N.SSE_ENDPOINT: obs.endpoint}
            else:
                name, kind = obs.name, SpanKind.INTERNAL
                attributes = _plain(obs.attributes)
            started, trace_id, span_id = self.begin(
                name, kind, attributes, trace.trace_id, obs.parent_span_id,
                trace_context.get() is None)
            if span_id is not None:
                obs.trace = trace._replace(trace_id=trace_id, span_id=span_id)
            started.named = N.REQUEST_MODEL in attributes
            obs._otel = started
            obs.__class__ = self._bridged(type(obs))
        except Exception as err:  # the call goes on, observed by the toolkit alone
            _metrics.report_internal_error("otel_start", err)

    @staticmethod
    def _provider_start(obs: ProviderCall) -> tuple[str, SpanKind, dict[str, Any]]:
        attributes: dict[str, Any] = {N.OPERATION_NAME: obs.operation,
                                      N.PROVIDER_NAME: obs.provider}
        name = obs.operation
        if obs.model != UNKNOWN_MODEL:
            attributes[N.REQUEST_MODEL] = obs.model
            name = f"{obs.operation} {obs.model}"
        return name, SpanKind.CLIENT, attributes

    def _bridged(self, cls: type) -> type:
        found = self._classes.get(cls)
        if found is None:
            found = self._classes[cls] = _observer_class(cls, self)
        return found

    # -- ending a span ---------------------------------------------------------------------
    def end(self, obs: Any, outcome: str, exc: BaseException | None) -> None:
        """The observer has ended: the span's last attributes (set at once), then its end."""
        started: _Started = obs._otel
        span = started.span
        try:
            attributes: dict[str, Any] = {N.OUTCOME: outcome}
            if isinstance(obs, ProviderCall):
                self._provider_end(obs, started, attributes, outcome, exc)
            elif isinstance(obs, SSEStream):
                attributes[N.SSE_EVENTS] = obs.events
                attributes[N.SSE_HEARTBEATS] = obs.heartbeats
                if obs.disconnected:
                    attributes[N.SSE_DISCONNECTED] = True
            span.set_attributes(attributes)
            if outcome == ERROR and exc is not None:
                failed(span, exc)
        finally:
            span.end()

    def _provider_end(self, obs: ProviderCall, started: _Started, attributes: dict[str, Any],
                      outcome: str, exc: BaseException | None) -> None:
        u = obs.usage
        if obs.response_model:
            attributes[N.RESPONSE_MODEL] = obs.response_model
        if not started.named and obs.model != UNKNOWN_MODEL:  # the response named the model
            started.span.update_name(f"{obs.operation} {obs.model}")
        if u.input or u.output:
            attributes[N.INPUT_TOKENS] = u.input
            attributes[N.OUTPUT_TOKENS] = u.output
        if u.cached_input:
            attributes[N.CACHE_READ_TOKENS] = u.cached_input
        if u.cache_write:
            attributes[N.CACHE_WRITE_TOKENS] = u.cache_write
        if u.reasoning:
            attributes[N.REASONING_TOKENS] = u.reasoning
        if u.retries:
            attributes[N.RETRIES] = u.retries
        if started.cost is not None:
            attributes[N.COST_USD] = started.cost[0]
            if started.cost[1]:
                attributes[N.PRICE_SOURCE] = started.cost[1]
        ttfc = obs.first_at - obs.start if obs.first_at else None
        if ttfc is not None:
            attributes[N.REQUEST_STREAM] = True
            attributes[N.TIME_TO_FIRST_CHUNK] = ttfc
        instruments = self.instruments()
        if instruments is not None:
            self._record(instruments, obs, started, outcome, exc, ttfc)

    def _record(self, instruments: _Instruments, obs: ProviderCall, started: _Started,
                outcome: str, exc: BaseException | None, ttfc: float | None) -> None:
        """The GenAI client metrics, recorded with the span current (for exemplars)."""
        attributes: dict[str, Any] = {N.OPERATION_NAME: obs.operation,
                                      N.PROVIDER_NAME: obs.provider}
        if started.named:
            attributes[N.REQUEST_MODEL] = obs.model
        if obs.response_model:
            attributes[N.RESPONSE_MODEL] = obs.response_model
        if outcome == ERROR and exc is not None:
            attributes[N.ERROR_TYPE] = error_type(exc)
        elif outcome != OK:
            attributes[N.ERROR_TYPE] = STATUS[outcome]  # cancelled: not a success
        token = otel_context.attach(started.context)
        try:
            instruments.duration.record(perf_counter() - obs.start, attributes)
            if ttfc is not None:
                instruments.first_chunk.record(ttfc, attributes)
            u = obs.usage
            if instruments.counters:  # every call, a failed one too (0 when no usage came)
                counted = {**attributes, N.TOKEN_MODALITY: N.UNKNOWN_MODALITY}
                for field, counter in instruments.counters:
                    value = getattr(u, field)
                    if value > 0 or field in N.ALWAYS_COUNTED:
                        counter.add(value, counted)
            if not (u.input or u.output):
                return
            if instruments.token_usage is not None:
                instruments.token_usage.record(u.input, {**attributes, N.TOKEN_TYPE: "input"})
                instruments.token_usage.record(u.output, {**attributes, N.TOKEN_TYPE: "output"})
            if outcome == OK:  # the per-call histograms: successful calls only
                for field, histogram in instruments.token_histograms:
                    histogram.record(getattr(u, field), attributes)
        finally:
            otel_context.detach(token)

    # -- trace_span(...) as a context manager --------------------------------------------
    def opened(self, holder: ToolkitSpanContext) -> None:
        """``with trace_span(...)`` has opened its span (``open_span`` made it current)."""
        span, token = holder._span, holder._token
        if span is None or token is None:
            return
        try:
            previous = token.old_value
            fresh = previous is None or previous is token.MISSING
            started, trace_id, span_id = self.begin(
                span.name, SpanKind.INTERNAL, _plain(span.attributes), span.trace_id,
                span.parent_span_id, fresh)
            if span_id is not None:
                span.trace_id, span.span_id = trace_id, span_id
                ctx = trace_context.get()
                if ctx is not None:  # the same context: swap the one open_span set
                    trace_context.reset(token)
                    holder._token = trace_context.set(
                        TraceContext(trace_id, span_id, ctx.usage, ctx.request))
            span._otel = (started, otel_context.attach(started.context))
            span.__class__ = _BridgedSpan
        except Exception as err:
            _metrics.report_internal_error("otel_start", err)

    # -- served requests -------------------------------------------------------------------
    def request(self, req: ServerRequest) -> None:
        """A served request has started: its span is a SERVER span, the request's span ID
        its own from now on (the remote parent is the OpenTelemetry span's parent)."""
        try:
            started, trace_id, span_id = self.begin(
                req.method, SpanKind.SERVER, {N.HTTP_METHOD: req.method, N.URL_PATH: req.path},
                req.trace_id, req.span_id, False)
            if span_id is not None:
                req.trace_id, req.span_id = trace_id, span_id
            req._otel = started
            req.__class__ = _BridgedRequest
        except Exception as err:
            _metrics.report_internal_error("otel_start", err)


def failed(span: Any, exc: BaseException) -> None:
    """ERROR status, ``error.type`` and the exception as an event (the user's, untouched)."""
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    span.set_attribute(N.ERROR_TYPE, error_type(exc))
    span.record_exception(exc)


def _plain(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes OpenTelemetry can carry (str, bool, int, float); others as ``repr``."""
    return {str(k): v if isinstance(v, (str, bool, int, float)) else repr(v)
            for k, v in attributes.items()}


def _observer_class(cls: type, bridge: Bridge) -> type:
    """``cls`` whose span is also OpenTelemetry's: current around each step, ended with it."""
    base_enter: Callable[[Any], Any] = cls.enter  # type: ignore[attr-defined]
    base_leave: Callable[[Any, Any], None] = cls.leave  # type: ignore[attr-defined]
    base_end: Callable[..., None] = cls.end  # type: ignore[attr-defined]
    attach, detach = otel_context.attach, otel_context.detach

    def enter(self: Any) -> Any:
        return base_enter(self), attach(self._otel.context)

    def leave(self: Any, state: Any) -> None:
        ours, theirs = state
        try:
            base_leave(self, ours)
        finally:
            detach(theirs)

    def end(self: Any, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        try:
            base_end(self, outcome, exc, result)
        finally:
            bridge.end(self, outcome, exc)

    namespace: dict[str, Any] = {"__slots__": (), "enter": enter, "leave": leave, "end": end,
                                 "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    if issubclass(cls, ProviderCall):
        base_account = cls._account

        def _account(self: Any, status: str) -> tuple[float | None, str | None]:
            cost, source = base_account(self, status)
            if cost is not None:
                self._otel.cost = (cost, source)
            return cost, source

        namespace["_account"] = _account
    return type(cls.__name__, (cls,), namespace)


class _BridgedSpan(ToolkitSpan):
    """A ``with trace_span(...)`` span that is also OpenTelemetry's: its attributes go there
    too, and closing it ends (and un-currents) the OpenTelemetry span."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        super().set_attribute(key, value)
        try:
            self._otel[0].span.set_attribute(key, _plain({key: value})[key])
        except Exception as err:
            _metrics.report_internal_error("otel_attribute", err)

    def _close(self, token: Any, exc: BaseException | None,
               metrics: _metrics.Metrics | None = None) -> float:
        started, attached = self._otel
        try:
            return super()._close(token, exc, metrics)
        finally:
            try:
                otel_context.detach(attached)
                span = started.span
                outcome = OK if exc is None else outcome_for(exc)
                span.set_attribute(N.OUTCOME, outcome)
                if outcome == ERROR and exc is not None:
                    failed(span, exc)
                span.end()
            except Exception as err:
                _metrics.report_internal_error("otel_end", err)


_BridgedSpan.__name__ = _BridgedSpan.__qualname__ = "Span"


class _BridgedRequest(ServerRequest):
    """A served request that is also an OpenTelemetry SERVER span.

    ``enter`` also makes the span OpenTelemetry's current one and still returns the
    toolkit's own token: the ASGI middleware resets that token itself (no call on its
    hottest path), leaving OpenTelemetry's context to go with the request's task, as the
    WSGI middleware leaves both with the request's own context. ``exit`` undoes both.
    """

    __slots__ = ()

    def enter(self) -> Any:
        token = super().enter()
        self._otel.attached.append((token, otel_context.attach(self._otel.context)))
        return token

    def exit(self, token: Any) -> None:  # type: ignore[override]  # (a staticmethod there)
        try:
            ServerRequest.exit(token)
        finally:
            attached = self._otel.attached
            for at, (ours, theirs) in enumerate(attached):  # tokens are not hashable
                if ours is token:
                    del attached[at]
                    otel_context.detach(theirs)
                    break

    def finish(self) -> None:
        if self.finished:
            return
        try:
            super().finish()
        finally:
            self._end_span()

    def _end_span(self) -> None:
        try:
            span, route = self._otel.span, self.route or UNMATCHED
            status = self.status
            cut_short = self.disconnected or self.server_cancelled
            if cut_short and (status is None or not self.sse):
                status = 499
            elif status is None:
                status = 500
            if route != UNMATCHED:
                span.set_attribute(N.HTTP_ROUTE, route)
                span.update_name(f"{self.method} {route}")
            span.set_attribute(N.HTTP_STATUS, status)
            if cut_short:
                span.set_attribute(N.OUTCOME, "cancelled")
            error = self.error if not self.disconnected else None
            if error is not None:
                failed(span, error)
            elif status >= 500 and status != 499:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute(N.ERROR_TYPE, str(status))
            span.end()
        except Exception as err:
            _metrics.report_internal_error("otel_end", err)


_bridge_lock = threading.Lock()


def enable(tracer_provider: Any = None, meter_provider: Any = None, *,
           metrics: bool = True) -> Bridge:
    """Turn the bridge on (again, with these providers; None: the global ones, looked up
    as spans start, so a provider set after this call is used)."""
    with _bridge_lock:
        found = _observe.bridge = Bridge(tracer_provider, meter_provider, metrics)
    return found


def disable() -> None:
    """Turn the bridge off: observers that start from now on make no OpenTelemetry span
    (those in flight still end theirs)."""
    with _bridge_lock:
        _observe.bridge = None


def enabled() -> bool:
    return _observe.bridge is not None
