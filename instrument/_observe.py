"""What the decorators share: a span that is current only while the wrapped code runs."""

from __future__ import annotations

from time import perf_counter
from typing import Any

from instrument import _metrics
from instrument._context import make_context, new_span_id, new_trace_id, trace_context
from instrument._engine import Observer
from instrument._loggate import log_enabled

__all__ = ["TracedObserver", "bridge", "log_enabled", "resolve_metrics"]

#: the OpenTelemetry bridge (``instrument._otel``) while it is on, else None. Each observer
#: and served request reads it once, as it starts: the whole cost of the bridge when off.
bridge: Any = None


class TracedObserver(Observer):
    """An observer whose call runs in its own child span (or a new trace).

    The span is not logged or measured as a span: the decorator's own metrics
    already time it. It exists so nested calls and log lines carry the trace.
    """

    # _otel: the OpenTelemetry span's state, set only while the bridge is on (never read else)
    __slots__ = ("_otel", "metrics", "parent_span_id", "start", "trace")
    _otel: Any

    def __init__(self, metrics: _metrics.Metrics, usage: Any = None) -> None:
        self.ended = False
        self.metrics = metrics
        self.start = perf_counter()
        ctx = trace_context.get()
        if ctx is None:
            metrics.traces.inc()
            self.trace = make_context((new_trace_id(), new_span_id(), usage, None))
            self.parent_span_id: str | None = None
        else:
            self.trace = make_context((ctx.trace_id, new_span_id(), usage or ctx.usage,
                                   ctx.request))
            self.parent_span_id = ctx.span_id

    def enter(self) -> Any:
        return trace_context.set(self.trace)

    def leave(self, state: Any) -> None:
        try:
            trace_context.reset(state)
        except ValueError:  # entered in another context (a GC finaliser): nothing to undo
            pass


def resolve_metrics(registry: Any) -> _metrics.Metrics:
    return _metrics.current() if registry is None else _metrics.metrics_for(registry)
