"""One trace across services instrumented by OpenTelemetry itself, with the bridge on: an
OpenTelemetry-instrumented caller, our service, and an OpenTelemetry-instrumented downstream
service make one tree in one trace (docs/opentelemetry.md shows it)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace as otel_trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan

from instrument import get_trace_id, trace_span, track_provider
from instrument.adapters.httpx import instrument_client
from instrument.adapters.starlette import instrument_app
from tests.adapters.apps.starlette_app import serving
from tests.conftest import LogCapture
from tests.otel.conftest import Otel, hex_parent, hex_span, hex_trace

pytestmark = pytest.mark.no_internal_errors


def _ours() -> FastAPI:
    app = FastAPI()

    @track_provider("openai", "gpt-4o-mini")
    async def complete() -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}

    @app.get("/answer")
    async def answer(downstream: str) -> dict[str, Any]:
        await complete()
        with trace_span("search"):
            async with instrument_client(httpx.AsyncClient(timeout=10)) as client:
                found = (await client.get(f"{downstream}/search")).json()
        return {"trace_id": get_trace_id(), "downstream": found}

    return instrument_app(app)


def _theirs(otel: Otel) -> FastAPI:
    app = FastAPI()

    @app.get("/search")
    async def search() -> dict[str, Any]:
        return {"trace_id": f"{otel_trace.get_current_span().get_span_context().trace_id:032x}"}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=otel.tracer_provider)
    return app


def tree(spans: list[ReadableSpan]) -> list[str]:
    """``name (kind)`` lines, indented under their parents, children in start order."""
    by_parent: dict[str | None, list[ReadableSpan]] = {}
    ids = {hex_span(s) for s in spans}
    for span in spans:
        parent = hex_parent(span)
        by_parent.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            lines.append(f"{'  ' * depth}{span.name} ({span.kind.name})")
            walk(hex_span(span), depth + 1)

    walk(None, 0)
    return lines


def test_a_trace_crosses_opentelemetry_services_on_both_sides_as_one_tree(
        otel: Otel, logs: LogCapture) -> None:
    tracer = otel.tracer_provider.get_tracer("caller")
    with serving(_theirs(otel)) as downstream, serving(_ours()) as url, \
            httpx.Client(timeout=10) as client:
        HTTPXClientInstrumentor().instrument_client(client, tracer_provider=otel.tracer_provider)
        with tracer.start_as_current_span("caller") as caller:
            body = client.get(f"{url}/answer", params={"downstream": downstream}).json()
        otel.named("GET /answer")  # ours ends just after its response
    trace_id = f"{caller.get_span_context().trace_id:032x}"
    assert body == {"trace_id": trace_id, "downstream": {"trace_id": trace_id}}
    spans = otel.spans
    assert {hex_trace(s) for s in spans} == {trace_id}
    lines = tree(spans)
    assert lines[:5] == [
        "caller (INTERNAL)",
        "  GET (CLIENT)",                       # OpenTelemetry's httpx instrumentation
        "    GET /answer (SERVER)",             # ours, through the bridge
        "      chat gpt-4o-mini (CLIENT)",
        "      search (INTERNAL)",
    ]
    assert lines[5] == "        GET /search (SERVER)"  # OpenTelemetry's FastAPI instrumentation
    ours = otel.named("GET /answer")
    [line] = [x for x in logs.events("request") if x["route"] == "/answer"]
    assert (line["trace_id"], line["span_id"]) == (trace_id, hex_span(ours))
