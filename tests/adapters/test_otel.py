"""The OpenTelemetry bridge: OTel's current trace becomes instrument's (API only, no SDK)."""

from __future__ import annotations

import pytest

otel_trace = pytest.importorskip("opentelemetry.trace")

from instrument import get_trace_id, inject_headers, trace_span  # noqa: E402
from instrument.adapters.otel import otel_trace_context, use_otel_trace  # noqa: E402

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


def otel_span() -> object:
    ctx = otel_trace.SpanContext(trace_id=TRACE_ID, span_id=SPAN_ID, is_remote=False,
                                 trace_flags=otel_trace.TraceFlags(1))
    return otel_trace.use_span(otel_trace.NonRecordingSpan(ctx))


def test_inside_an_otel_span_instrument_uses_its_trace_and_span_as_parent() -> None:
    with otel_span(), use_otel_trace() as trace_id:
        assert trace_id == get_trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
        with trace_span("child") as span:
            assert span.parent_span_id == "00f067aa0ba902b7"
        headers = inject_headers({})
        assert headers["X-Trace-ID"] == trace_id
        assert headers["traceparent"].startswith(f"00-{trace_id}-")
    assert get_trace_id() is None


def test_outside_any_otel_span_nothing_changes() -> None:
    assert otel_trace_context() is None
    with use_otel_trace() as trace_id:
        assert trace_id is None and get_trace_id() is None
