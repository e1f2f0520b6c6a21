"""OpenTelemetry: the bridge (``enable``) and OpenTelemetry's current trace as instrument's.

``enable()`` (or ``instrument.configure(otel=True)``) makes every ``trace_span``, provider
call, SSE stream and served request also an OpenTelemetry span, with the same trace and
span IDs, through the global tracer provider or the one given (docs/opentelemetry.md).
It is never switched on by itself, not even when an SDK tracer provider is set: like
the toolkit's logging, the bridge is the application's choice.

``use_otel_trace()`` goes the other way without the bridge: inside it the toolkit's
exemplars, log lines and outgoing ``X-Trace-ID``/``traceparent`` headers carry
OpenTelemetry's current trace ID.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

try:
    from opentelemetry import trace as otel_trace

    from instrument._otel import disable, enable, enabled
except ImportError as exc:
    raise ImportError("instrument.adapters.otel needs opentelemetry-api: "
                      "pip install 'llm-instrument[otel]'") from exc

from instrument._context import get_trace_id
from instrument._span import use_trace_id

__all__ = ["disable", "enable", "enabled", "otel_trace_context", "use_otel_trace"]


def otel_trace_context() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current OpenTelemetry span in W3C hex, or None."""
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


@contextmanager
def use_otel_trace() -> Iterator[str | None]:
    """Bind the current OpenTelemetry trace for the body (its span as the parent).

    Outside any OpenTelemetry span it changes nothing and yields the current
    instrument trace ID (possibly None).
    """
    found = otel_trace_context()
    if found is None:
        yield get_trace_id()
        return
    with use_trace_id(found[0], parent_span_id=found[1]) as trace_id:
        yield trace_id
