"""The FastAPI/Starlette adapter: what the shared server suite cannot see from outside.

Most tests drive the ASGI callable in-process (httpx's ASGITransport or raw
ASGI messages) on asyncio and trio; the shared suite covers uvicorn.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from instrument import get_trace_id, track_sse
from instrument.adapters import fastapi as fastapi_adapter
from instrument.adapters.starlette import InstrumentMiddleware, instrument_app
from tests.adapters.apps.starlette_app import create_app, serving
from tests.conftest import LogCapture
from tests.helpers import scrape, wait_until

pytestmark = pytest.mark.anyio

Message = MutableMapping[str, Any]


def client_for(app: Any, **transport: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, **transport),
                             base_url="http://testserver")


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0.0 if none)."""
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == name
               and all(sample.labels.get(k) == v for k, v in labels.items()))


def requests(registry: CollectorRegistry, **labels: str) -> float:
    return total(registry, "http_requests_total", **labels)


def routes_seen(registry: CollectorRegistry) -> set[str]:
    return {sample.labels["route"] for family in registry.collect()
            if family.name == "http_requests" for sample in family.samples
            if sample.name == "http_requests_total"}


async def call(app: Any, path: str = "/", *, receive: Any = None,
               send_error: BaseException | None = None) -> list[Message]:
    """Drive the ASGI callable with raw messages; what it sent."""
    sent: list[Message] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"x-trace-id", b"raw-1")],
             "client": ("10.0.0.1", 4321), "server": ("testserver", 80)}

    async def default_receive() -> Message:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: Message) -> None:
        if send_error is not None and message["type"] == "http.response.body":
            raise send_error
        sent.append(message)

    await app(scope, receive or default_receive, send)
    return sent


# -- streaming responses -------------------------------------------------------------

async def test_streamed_bodies_keep_the_trace_id_in_their_generators(
        registry: CollectorRegistry) -> None:
    async def async_chunks() -> AsyncIterator[str]:
        for _ in range(3):
            await anyio.sleep(0)
            yield f"{get_trace_id()}\n"

    def sync_chunks() -> Iterator[str]:  # Starlette iterates these in a worker thread
        for _ in range(3):
            yield f"{get_trace_id()}\n"

    app = instrument_app(Starlette(routes=[
        Route("/async", lambda r: StreamingResponse(async_chunks(), media_type="text/plain")),
        Route("/sync", lambda r: StreamingResponse(sync_chunks(), media_type="text/plain")),
    ]))
    async with client_for(app) as client:
        for path in ("/async", "/sync"):
            r = await client.get(path, headers={"X-Trace-ID": f"t{path[1:]}"})
            assert r.text.splitlines() == [f"t{path[1:]}"] * 3
            assert r.headers["x-trace-id"] == f"t{path[1:]}"
            assert requests(registry, route=path, status="200") == 1


async def test_file_response_bytes_are_counted(tmp_path: Path, logs: LogCapture) -> None:
    target = tmp_path / "report.txt"
    target.write_bytes(b"x" * 70_000)
    app = instrument_app(Starlette(routes=[Route("/file", lambda r: FileResponse(target))]))
    async with client_for(app) as client:
        r = await client.get("/file")
    assert len(r.content) == 70_000 and r.headers["x-trace-id"]
    [line] = logs.events("request")
    assert (line["route"], line["status"], line["bytes"]) == ("/file", 200, 70_000)


async def test_sse_starlette_event_source_response(registry: CollectorRegistry) -> None:
    async def events() -> AsyncIterator[dict[str, str]]:
        for i in range(3):
            yield {"event": "tick", "data": f"{i} {get_trace_id()}"}

    app = instrument_app(Starlette(routes=[Route("/es", lambda r: EventSourceResponse(events()))]))
    async with client_for(app) as client:
        r = await client.get("/es", headers={"X-Trace-ID": "sse-1"})
    assert r.headers["x-trace-id"] == "sse-1"
    assert [line for line in r.text.splitlines() if line.startswith("data:")] == [
        "data: 0 sse-1", "data: 1 sse-1", "data: 2 sse-1"]
    assert requests(registry, route="/es", status="200") == 1
    assert total(registry, "http_request_duration_seconds_count", route="/es") == 0
    assert total(registry, "sse_streams_closed_total", endpoint="/es", outcome="completed") == 1
    assert total(registry, "sse_events_total", endpoint="/es") == 3


async def test_track_sse_streams_are_measured_once_and_told_of_the_disconnect(
        registry: CollectorRegistry) -> None:
    @track_sse("/ticks")
    async def ticks() -> AsyncIterator[str]:
        while True:
            yield f"data: {get_trace_id()}\n\n"
            await anyio.sleep(0.01)

    app = instrument_app(Starlette(routes=[
        Route("/ticks", lambda r: StreamingResponse(ticks(), media_type="text/event-stream"))]))
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if incoming:
            return incoming.pop()
        await anyio.sleep(0.1)
        return {"type": "http.disconnect"}

    sent = await call(app, "/ticks", receive=receive)
    bodies = {m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")}
    assert bodies == {b"data: raw-1\n\n"}
    assert total(registry, "sse_connections_total") == 1  # the decorator's, no fallback
    assert total(registry, "sse_streams_closed_total", endpoint="/ticks",
                 outcome="client_disconnect") == 1
    assert requests(registry, route="/ticks", status="200") == 1


# -- route labels ----------------------------------------------------------------------

async def item(request: Request) -> Response:
    return JSONResponse({"item_id": request.path_params["item_id"], "route_seen": True})


async def test_mounted_sub_apps_are_labelled_with_the_full_template(
        registry: CollectorRegistry) -> None:
    sub = Starlette(routes=[Route("/items/{item_id:int}", item)])

    async def opaque(scope: Any, receive: Any, send: Any) -> None:  # a non-Starlette ASGI app
        await PlainTextResponse("static")(scope, receive, send)

    app = instrument_app(Starlette(routes=[
        Mount("/api", app=sub),
        Mount("/v2", routes=[Mount("/deep", routes=[Route("/items/{item_id}", item)])]),
        Mount("/static", app=opaque),
    ]))
    async with client_for(app) as client:
        assert (await client.get("/api/items/1")).status_code == 200
        assert (await client.get("/v2/deep/items/x")).status_code == 200
        assert (await client.get("/static/css/site.css")).text == "static"
        assert (await client.get("/api/nothing-here")).status_code == 404
    assert routes_seen(registry) == {"/api/items/{item_id}", "/v2/deep/items/{item_id}",
                                     "/static/{path}", "__unmatched__"}


async def test_fastapi_routers_and_mounts_are_labelled_with_the_full_template(
        registry: CollectorRegistry) -> None:
    router = APIRouter(prefix="/items")

    @router.get("/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id}

    sub = FastAPI()
    sub.include_router(router, prefix="/v1")
    app = FastAPI()
    app.include_router(router, prefix="/api")
    app.mount("/sub", sub)
    instrument_app(app)
    async with client_for(app) as client:
        assert (await client.get("/api/items/1")).json() == {"item_id": 1}
        assert (await client.get("/sub/v1/items/2")).json() == {"item_id": 2}
        assert (await client.put("/api/items/1")).status_code == 405
    assert requests(registry, route="/api/items/{item_id}", status="200") == 1
    assert requests(registry, route="/api/items/{item_id}", status="405") == 1
    assert requests(registry, route="/sub/v1/items/{item_id}", status="200") == 1
    assert "/items/{item_id}" not in routes_seen(registry)


async def test_server_root_path_is_not_part_of_the_label(registry: CollectorRegistry,
                                                         logs: LogCapture) -> None:
    app = instrument_app(Starlette(routes=[Route("/items/{item_id}", item)]))
    async with client_for(app, root_path="/proxy") as client:
        assert (await client.get("/proxy/items/5")).status_code == 200
        assert (await client.get("/proxy/metrics/health")).json()["status"] == "ok"
    assert routes_seen(registry) == {"/items/{item_id}"}
    [line] = logs.events("request")
    assert (line["route"], line["path"]) == ("/items/{item_id}", "/proxy/items/5")


async def test_http_exception_in_a_route_keeps_the_route_label(
        registry: CollectorRegistry) -> None:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        raise HTTPException(status_code=404, detail="no such thing")

    instrument_app(app)
    async with client_for(app) as client:
        assert (await client.get("/things/3")).status_code == 404
    assert requests(registry, route="/things/{thing_id}", status="404") == 1


async def test_a_slow_request_is_in_progress_once_it_reads_its_body(
        registry: CollectorRegistry) -> None:
    """A slow handler (an LLM call) shows as in progress before it answers."""
    entered, release = anyio.Event(), anyio.Event()
    router = APIRouter()

    @router.post("/slow/{n}")
    async def slow(n: int, body: dict[str, Any]) -> dict[str, int]:
        entered.set()
        await release.wait()
        return {"n": n}

    app = FastAPI()
    app.include_router(router, prefix="/api")
    instrument_app(app)
    async with client_for(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/api/slow/1", json={"prompt": "hi"}))
        await entered.wait()
        assert total(registry, "http_requests_in_progress", route="/api/slow/{n}") == 1
        release.set()
    assert total(registry, "http_requests_in_progress", route="/api/slow/{n}") == 0
    assert requests(registry, route="/api/slow/{n}", status="200") == 1


# -- errors, disconnects, cancellation ------------------------------------------------

async def test_custom_500_handler_runs_inside_the_trace(registry: CollectorRegistry,
                                                       logs: LogCapture) -> None:
    async def on_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"trace_id": get_trace_id()}, status_code=500)

    async def boom(request: Request) -> Response:
        raise ValueError("kaput")

    app = instrument_app(Starlette(routes=[Route("/boom", boom)],
                                   exception_handlers={Exception: on_error}))
    async with client_for(app, raise_app_exceptions=False) as client:
        r = await client.get("/boom", headers={"X-Trace-ID": "err-7"})
    assert r.status_code == 500 and r.json() == {"trace_id": "err-7"}
    assert r.headers["x-trace-id"] == "err-7"
    assert total(registry, "http_errors_total", route="/boom", status="500") == 1
    [logged] = logs.events("unhandled_exception")
    assert logged["trace_id"] == "err-7" and logged["exception"]["type"] == "ValueError"


async def test_exception_mid_stream_keeps_the_sent_status_and_counts_an_error(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    async def chunks() -> AsyncIterator[str]:
        yield "first\n"
        raise RuntimeError("stream broke")

    app = instrument_app(Starlette(routes=[Route("/s", lambda r: StreamingResponse(chunks()))]))
    async with client_for(app, raise_app_exceptions=False) as client:
        await client.get("/s")
    assert requests(registry, route="/s", status="200") == 1
    assert total(registry, "http_errors_total", route="/s", status="200") == 1
    assert len(logs.events("unhandled_exception")) == 1


async def test_background_task_failure_is_logged_after_the_response(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    async def fail() -> None:
        raise RuntimeError("background broke")

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", background=BackgroundTask(fail))

    app = instrument_app(Starlette(routes=[Route("/bg", endpoint)]))
    async with client_for(app, raise_app_exceptions=False) as client:
        r = await client.get("/bg", headers={"X-Trace-ID": "bg-err"})
    assert r.text == "ok"
    assert requests(registry, route="/bg", status="200") == 1
    assert total(registry, "http_errors_total", route="/bg", status="200") == 0
    [logged] = logs.events("unhandled_exception")
    assert logged["trace_id"] == "bg-err" and logged["after_response"] is True


async def test_send_failing_because_the_client_left_is_a_499(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("never delivered")

    app = instrument_app(Starlette(routes=[Route("/gone", endpoint)]))
    with pytest.raises(OSError, match="peer left"):
        await call(app, "/gone", send_error=ConnectionResetError("peer left"))
    assert requests(registry, route="/gone", status="499") == 1
    assert total(registry, "http_errors_total", route="/gone", status="499") == 0
    assert logs.events("unhandled_exception") == []


async def test_disconnect_during_a_plain_stream_is_a_499(registry: CollectorRegistry) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        while True:
            yield b"x"
            await anyio.sleep(0.01)

    app = instrument_app(Starlette(routes=[Route("/s", lambda r: StreamingResponse(chunks()))]))
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await anyio.sleep(0.05)
        return {"type": "http.disconnect"}

    await call(app, "/s", receive=receive)
    assert requests(registry, route="/s", status="499") == 1
    assert total(registry, "http_requests_in_progress", route="/s") == 0


async def test_cancelled_request_is_a_499_not_an_error(registry: CollectorRegistry,
                                                       logs: LogCapture) -> None:
    async def endpoint(request: Request) -> Response:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    app = instrument_app(Starlette(routes=[Route("/hang", endpoint)]))
    with anyio.move_on_after(0.05):  # what Hypercorn does when the client leaves
        await call(app, "/hang")
    assert requests(registry, route="/hang", status="499") == 1
    assert total(registry, "http_errors_total", route="/hang", status="499") == 0
    assert logs.events("unhandled_exception") == []


async def test_trace_context_is_restored_after_the_request() -> None:
    app = instrument_app(create_app())
    assert get_trace_id() is None
    sent = await call(app, "/trace")
    assert sent[1]["body"] == b"raw-1"
    assert get_trace_id() is None


# -- headers ----------------------------------------------------------------------------

async def test_trace_headers_replace_the_apps_own_and_leave_its_list_alone() -> None:
    own = [(b"content-type", b"text/plain"), (b"X-Trace-ID", b"stale")]
    snapshot = list(own)

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": own})
        await send({"type": "http.response.body", "body": b"hi"})

    app = InstrumentMiddleware(raw)
    async with client_for(app) as client:
        for _ in range(2):
            r = await client.get("/", headers={"X-Trace-ID": "fresh"})
            assert r.headers.get_list("x-trace-id") == ["fresh"]
    assert own == snapshot


# -- set-up: idempotence, several apps, plain ASGI apps, options ----------------------

async def test_instrument_app_twice_instruments_once(registry: CollectorRegistry) -> None:
    app = create_app()
    assert instrument_app(app) is app
    assert instrument_app(app, access_log=False) is app
    async with client_for(app) as client:
        r = await client.get("/items/1")
    assert r.headers.get_list("x-trace-id") == [r.json()["trace_id"]]
    assert requests(registry) == 1


async def test_two_apps_in_one_process(registry: CollectorRegistry) -> None:
    first, second = instrument_app(create_app()), instrument_app(FastAPI())

    @second.get("/hello")
    async def hello() -> str:
        return "hi"

    async with client_for(first) as one, client_for(second) as two:
        await one.get("/items/1")
        await two.get("/hello")
        await two.get("/hello")
    assert requests(registry, route="/items/{item_id}") == 1
    assert requests(registry, route="/hello") == 2


async def test_instrumenting_an_app_that_already_serves(registry: CollectorRegistry) -> None:
    app = create_app()
    async with client_for(app) as client:
        await client.get("/items/1")  # builds the middleware stack
        instrument_app(app)
        r = await client.get("/items/2")
    assert r.headers["x-trace-id"]
    assert requests(registry) == 1


async def test_an_instrumented_sub_app_mounted_in_an_instrumented_app_counts_once(
        registry: CollectorRegistry) -> None:
    sub = instrument_app(Starlette(routes=[Route("/items/{item_id}", item)]))
    app = instrument_app(Starlette(routes=[Mount("/api", app=sub)]))
    async with client_for(app) as client:
        r = await client.get("/api/items/1")
    assert len(r.headers.get_list("x-trace-id")) == 1
    assert routes_seen(registry) == {"/api/items/{item_id}"}
    assert requests(registry) == 1


async def test_middleware_around_a_plain_asgi_app(registry: CollectorRegistry) -> None:
    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": (get_trace_id() or "").encode()})

    wrapped = instrument_app(raw)
    assert isinstance(wrapped, InstrumentMiddleware)
    async with client_for(wrapped) as client:
        r = await client.get("/anything", headers={"X-Trace-ID": "plain-1"})
        assert (await client.get("/metrics")).status_code == 200
    assert r.text == r.headers["x-trace-id"] == "plain-1"
    assert routes_seen(registry) == {"__unmatched__"}  # no router, so no template


async def test_excluded_paths_are_not_measured_but_carry_the_trace(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    app = instrument_app(create_app(), exclude_paths=["/trace", "/items/*"])
    async with client_for(app) as client:
        r = await client.get("/trace", headers={"X-Trace-ID": "excl-1"})
        assert r.text == r.headers["x-trace-id"] == "excl-1"  # current in the handler too
        assert (await client.get("/items/3")).headers["x-trace-id"]
        await client.get("/nope")
    assert routes_seen(registry) == {"__unmatched__"}
    assert [line["path"] for line in logs.events("request")] == ["/nope"]
    assert total(registry, "trace_requests_total") == 1


async def test_metrics_path_options(registry: CollectorRegistry) -> None:
    moved = instrument_app(create_app(), metrics_path="/internal/metrics")
    async with client_for(moved) as client:
        r = await client.get("/internal/metrics/summary")
        assert r.status_code == 200 and r.headers["x-trace-id"]
        assert isinstance(r.json(), dict)
        assert (await client.get("/metrics")).status_code == 404  # now an app path
    none = instrument_app(create_app(), metrics_path=None)
    async with client_for(none) as client:
        assert (await client.get("/metrics")).status_code == 404
    assert requests(registry, route="__unmatched__", status="404") == 2


async def test_registry_option_keeps_metrics_apart(registry: CollectorRegistry) -> None:
    own = CollectorRegistry()
    app = instrument_app(create_app(), registry=own)
    async with client_for(app) as client:
        await client.get("/items/1")
        page = (await client.get("/metrics")).text
    assert requests(own, route="/items/{item_id}") == 1
    assert requests(registry) == 0
    assert 'route="/items/{item_id}"' in page


# -- FastAPI ----------------------------------------------------------------------------

class Order(BaseModel):
    sku: str
    quantity: int


async def test_fastapi_parses_parameters_behind_the_middleware(
        registry: CollectorRegistry) -> None:
    app = FastAPI()

    @app.post("/orders/{shop_id}")
    async def order(shop_id: int, body: Order, express: bool = False) -> dict[str, Any]:
        return {"shop_id": shop_id, "sku": body.sku, "quantity": body.quantity,
                "express": express, "trace_id": get_trace_id()}

    fastapi_adapter.instrument_app(app)
    async with client_for(app) as client:
        r = await client.post("/orders/7?express=true", json={"sku": "a-1", "quantity": 2},
                              headers={"X-Trace-ID": "order-1"})
        bad = await client.post("/orders/x", json={"sku": "a-1"})
    assert r.json() == {"shop_id": 7, "sku": "a-1", "quantity": 2, "express": True,
                        "trace_id": "order-1"}
    assert bad.status_code == 422
    assert requests(registry, method="POST", route="/orders/{shop_id}", status="200") == 1
    assert requests(registry, method="POST", route="/orders/{shop_id}", status="422") == 1


# -- scopes other than http -------------------------------------------------------------

async def test_websocket_and_lifespan_scopes_pass_through(registry: CollectorRegistry) -> None:
    started: list[str] = []

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{text} {get_trace_id()}")
        await websocket.close()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append("up")
        yield
        started.append("down")

    app = instrument_app(Starlette(routes=[WebSocketRoute("/ws", echo)], lifespan=lifespan))

    async def run(scope: dict[str, Any], incoming: list[Message]) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    lifespan_sent = await run({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                              [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in lifespan_sent] == ["lifespan.startup.complete",
                                                  "lifespan.shutdown.complete"]
    assert started == ["up", "down"]
    ws_scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "root_path": "",
                "raw_path": b"/ws", "query_string": b"", "scheme": "ws", "subprotocols": [],
                "headers": [(b"x-trace-id", b"ws-1")], "client": ("127.0.0.1", 1),
                "server": ("testserver", 80)}
    ws_sent = await run(ws_scope, [{"type": "websocket.connect"},
                                   {"type": "websocket.receive", "text": "hello"}])
    assert ws_sent[0] == {"type": "websocket.accept", "subprotocol": None, "headers": []}
    assert ws_sent[1] == {"type": "websocket.send", "text": "hello None"}  # no trace bound
    assert ws_sent[2]["type"] == "websocket.close"
    assert requests(registry) == 0


# -- a real server ----------------------------------------------------------------------

def test_mounted_app_under_uvicorn(registry: CollectorRegistry) -> None:
    app = instrument_app(Starlette(routes=[Mount("/api", app=create_app())]))
    with serving(app) as url:
        r = httpx.get(f"{url}/api/items/1", headers={"X-Trace-ID": "mounted"})
        assert r.json()["trace_id"] == "mounted"
        wait_until(lambda: scrape(f"{url}/metrics").value(
            "http_requests_total", route="/api/items/{item_id}") == 1)


# -- packaging --------------------------------------------------------------------------

def test_missing_starlette_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "starlette" or n.startswith("starlette.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "instrument.adapters.starlette")
    monkeypatch.delitem(sys.modules, "instrument.adapters.fastapi")
    for name in ("instrument.adapters.starlette", "instrument.adapters.fastapi"):
        with pytest.raises(ImportError, match=r"pip install 'llm-instrument\[fastapi\]'"):
            importlib.import_module(name)
