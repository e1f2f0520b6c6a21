"""One trace with services instrumented by OpenTelemetry itself, both directions, over W3C
trace context: OpenTelemetry's FastAPI and httpx instrumentations with its SDK and an
in-memory exporter, our FastAPI adapter and httpx client, real uvicorn servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace as otel_trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from instrument import get_trace_id, trace_span
from instrument.adapters.httpx import instrument_client
from instrument.adapters.starlette import instrument_app
from tests.adapters.apps.starlette_app import serving
from tests.conftest import LogCapture

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _ours() -> FastAPI:
    """Our service: instrumented by this toolkit, calling ``downstream`` through our client."""
    app = FastAPI()

    @app.get("/trace")
    async def trace() -> dict[str, Any]:
        return {"trace_id": get_trace_id()}

    @app.get("/call")
    async def call(downstream: str) -> dict[str, Any]:
        with trace_span("call-downstream") as span:
            async with instrument_client(httpx.AsyncClient(timeout=10)) as client:
                answer = (await client.get(f"{downstream}/seen")).json()
        return {"trace_id": get_trace_id(), "span_id": span.span_id, "downstream": answer}

    return instrument_app(app)


def _theirs(provider: TracerProvider) -> FastAPI:
    """A downstream service instrumented by OpenTelemetry's FastAPI instrumentation."""
    app = FastAPI()

    @app.get("/seen")
    async def seen() -> dict[str, Any]:
        ctx = otel_trace.get_current_span().get_span_context()
        return {"trace_id": _hex(ctx.trace_id, 32), "tracestate": ctx.trace_state.to_header()}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app


def test_an_opentelemetry_client_calling_us_continues_its_trace(
        otel: tuple[TracerProvider, InMemorySpanExporter], logs: LogCapture) -> None:
    provider, exporter = otel
    tracer = provider.get_tracer("caller")
    with serving(_ours()) as url, httpx.Client(timeout=10) as client:
        HTTPXClientInstrumentor().instrument_client(client, tracer_provider=provider)
        with tracer.start_as_current_span("caller") as caller:
            response = client.get(f"{url}/trace")
        trace_id = _hex(caller.get_span_context().trace_id, 32)
    assert response.json() == {"trace_id": trace_id}
    assert response.headers["x-trace-id"] == trace_id
    assert response.headers["traceparent"].split("-")[1] == trace_id
    [client_span] = [s for s in exporter.get_finished_spans()
                     if s.kind == otel_trace.SpanKind.CLIENT]
    sent_from = _hex(client_span.context.span_id, 16)  # the span the traceparent named
    [line] = [x for x in logs.events("request") if x["trace_id"] == trace_id]
    assert line["span_id"] == sent_from  # our access line names OpenTelemetry's span


def test_we_call_an_opentelemetry_service_in_the_same_trace(
        otel: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = otel
    with serving(_theirs(provider)) as downstream, serving(_ours()) as url:
        response = httpx.get(f"{url}/call", params={"downstream": downstream}, timeout=10,
                             headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    body = response.json()
    assert body["trace_id"] == TRACE_ID
    assert body["downstream"] == {"trace_id": TRACE_ID, "tracestate": TRACESTATE}
    [server_span] = [s for s in exporter.get_finished_spans()
                     if s.kind == otel_trace.SpanKind.SERVER]
    assert _hex(server_span.context.trace_id, 32) == TRACE_ID
    assert server_span.parent is not None and server_span.parent.is_remote
    assert _hex(server_span.parent.span_id, 16) == body["span_id"]  # our span is its parent
