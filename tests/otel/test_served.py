"""The bridge through real servers and a real SDK: requests served by uvicorn are SERVER spans
(their remote parent from ``traceparent``, the access line naming the same span), the work
inside them their children, and an ``openai`` SDK call against the fake provider a CLIENT
span whose ID is the one the provider receives in ``traceparent``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from flask import Flask
from opentelemetry.trace import SpanKind, StatusCode

from instrument import _otel_names as N
from instrument import trace_span, track_provider
from instrument._propagation import parse_traceparent
from instrument.adapters.aiohttp import instrument_app as instrument_aiohttp
from instrument.adapters.flask import instrument_app as instrument_flask
from instrument.adapters.openai import instrument_openai
from instrument.adapters.starlette import instrument_app
from tests.adapters.apps import aiohttp_app, flask_app
from tests.adapters.apps.starlette_app import serving
from tests.adapters.sdk_helpers import fake
from tests.conftest import LogCapture
from tests.fakes.llm_server import FakeLLM
from tests.otel.conftest import Otel, hex_parent, hex_span, hex_trace

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
MINI = "gpt-4o-mini"


class Failure(Exception):
    pass


def _app() -> FastAPI:
    app = FastAPI()

    @track_provider("openai", MINI)
    async def complete() -> dict[str, Any]:
        return {"model": MINI, "usage": {"prompt_tokens": 10, "completion_tokens": 2}}

    @app.get("/chat/{room}")
    async def chat(room: str) -> dict[str, Any]:
        with trace_span("prepare"):
            pass
        await complete()
        return {"room": room}

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            yield "data: 1\n\n"
            yield "data: 2\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/fail")
    async def fail() -> None:
        raise Failure("no")

    return instrument_app(app)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(_app()) as found:
        yield found


def test_a_served_request_is_a_server_span_and_the_parent_of_its_work(
        otel: Otel, url: str, logs: LogCapture) -> None:
    response = httpx.get(f"{url}/chat/lobby", timeout=10,
                         headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert response.json() == {"room": "lobby"}
    server = otel.named("GET /chat/{room}")
    assert server.kind == SpanKind.SERVER and hex_trace(server) == TRACE
    assert server.parent is not None and server.parent.is_remote
    assert hex_parent(server) == PARENT
    attributes = dict(server.attributes or {})
    assert (attributes[N.HTTP_ROUTE], attributes[N.HTTP_STATUS]) == ("/chat/{room}", 200)
    assert (attributes[N.HTTP_METHOD], attributes[N.URL_PATH]) == ("GET", "/chat/lobby")
    own = hex_span(server)
    assert hex_parent(otel.named("prepare")) == own
    assert hex_parent(otel.named(f"chat {MINI}")) == own
    # the response and the access line name the server span
    assert parse_traceparent(response.headers["traceparent"]) == (TRACE, own)
    [line] = logs.events("request")
    assert (line["trace_id"], line["span_id"]) == (TRACE, own)


def test_a_plain_sse_body_is_a_stream_span_inside_its_request(otel: Otel, url: str) -> None:
    response = httpx.get(f"{url}/events", timeout=10)
    assert response.text == "data: 1\n\ndata: 2\n\n"
    server, stream = otel.named("GET /events"), otel.named("sse /events")
    assert hex_parent(stream) == hex_span(server)
    assert (stream.attributes or {})[N.SSE_EVENTS] == 2


def test_an_unhandled_exception_is_the_server_spans_error(otel: Otel, url: str) -> None:
    assert httpx.get(f"{url}/fail", timeout=10).status_code == 500
    server = otel.named("GET /fail")
    assert server.status.status_code == StatusCode.ERROR
    assert (server.attributes or {})[N.ERROR_TYPE] == "Failure"
    assert (server.attributes or {})[N.HTTP_STATUS] == 500
    assert [e.name for e in server.events] == ["exception"]


def test_an_openai_sdk_call_is_a_client_span_whose_id_reaches_the_provider(
        otel: Otel, fake: FakeLLM, logs: LogCapture) -> None:
    with openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0) as made:
        client = instrument_openai(made)
        with trace_span("handler") as outer:
            client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}])
        sent = fake.last("/v1/chat/completions").headers
        stream = client.chat.completions.create(
            model=MINI, messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        for _ in stream:
            break  # the consumer stops after the first chunk
        stream.close()
    plain, streamed = [s for s in otel.spans if s.name == f"chat {MINI}"]
    assert plain.kind == SpanKind.CLIENT and hex_parent(plain) == outer.span_id
    assert parse_traceparent(sent["traceparent"]) == (outer.trace_id, hex_span(plain))
    attributes = dict(plain.attributes or {})
    assert attributes[N.RESPONSE_MODEL] == "gpt-4o-mini-2024-07-18"
    assert (attributes[N.INPUT_TOKENS], attributes[N.OUTPUT_TOKENS],
            attributes[N.CACHE_READ_TOKENS]) == (1200, 80, 1000)
    assert attributes[N.COST_USD] > 0
    event = logs.events("provider_call")[0]
    assert event["span_id"] == hex_span(plain)
    stream_attributes = dict(streamed.attributes or {})
    assert stream_attributes[N.REQUEST_STREAM] is True
    assert stream_attributes[N.OUTCOME] == "closed"


def test_flask_under_werkzeug_and_aiohttp_requests_are_server_spans_too(otel: Otel) -> None:
    """The WSGI and aiohttp adapters bind the request the same way: parent and children."""
    flask = Flask(__name__)

    @flask.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        with trace_span("flask work"):
            return {"item_id": item_id}

    async def handler(request: web.Request) -> web.Response:
        with trace_span("aiohttp work"):
            return web.json_response({"ok": True})

    aio = web.Application()
    aio.router.add_get("/things/{thing}", handler)
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    with flask_app.serving(instrument_flask(flask)) as url:
        assert httpx.get(f"{url}/items/3", headers=headers, timeout=10).status_code == 200
    with aiohttp_app.serving(instrument_aiohttp(aio)) as url:
        assert httpx.get(f"{url}/things/x", headers=headers, timeout=10).status_code == 200
    for server, work in (("GET /items/<int:item_id>", "flask work"),
                         ("GET /things/{thing}", "aiohttp work")):
        span = otel.named(server)
        assert span.kind == SpanKind.SERVER and hex_trace(span) == TRACE
        assert hex_parent(span) == PARENT
        assert hex_parent(otel.named(work)) == hex_span(span)
