"""The standard Starlette and FastAPI apps of the shared server suite, served by uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from fastapi import BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from instrument import get_trace_id
from instrument.adapters.starlette import instrument_app
from tests.helpers import serve_asgi

ITEM_ROUTE = "/items/{item_id}"
BACKGROUND_TRACE_IDS: list[str | None] = []


async def _chunks(chunks: list[str], interval: float) -> AsyncIterator[str]:
    for i, chunk in enumerate(chunks):
        if i:
            await anyio.sleep(interval)
        yield chunk


def slow_body() -> StreamingResponse:
    """Headers at once, then three chunks 0.2 s apart: the body ends >= 0.4 s later."""
    return StreamingResponse(_chunks([f"chunk {i}\n" for i in range(3)], 0.2),
                             media_type="text/plain")


def sse(count: int, interval: float) -> StreamingResponse:
    """A plain generator served as an event stream (no ``@track_sse``)."""
    return StreamingResponse(_chunks([f"data: {i}\n\n" for i in range(count)], interval),
                             media_type="text/event-stream")


async def record_background_trace() -> None:
    await anyio.sleep(0.5)
    BACKGROUND_TRACE_IDS.append(get_trace_id())


def create_app() -> Starlette:
    """The routes every server adapter's test app provides, as a plain Starlette app."""

    async def item(request: Request) -> Response:
        return JSONResponse({"item_id": request.path_params["item_id"],
                             "trace_id": get_trace_id()})

    async def only_post(request: Request) -> Response:
        return PlainTextResponse("posted")

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def background(request: Request) -> Response:
        return PlainTextResponse("ok", background=BackgroundTask(record_background_trace))

    async def trace(request: Request) -> Response:
        return PlainTextResponse(get_trace_id() or "")

    return Starlette(routes=[
        Route(ITEM_ROUTE, item),
        Route("/only-post", only_post, methods=["POST"]),
        Route("/boom", boom),
        Route("/slow-body", lambda request: slow_body()),
        Route("/sse", lambda request: sse(5, 0.02)),
        Route("/sse-long", lambda request: sse(200, 0.05)),
        Route("/background", background),
        Route("/trace", trace),
    ])


def create_fastapi_app() -> FastAPI:
    """The same routes as a FastAPI app (path parameters parsed, BackgroundTasks injected)."""
    app = FastAPI()

    @app.get(ITEM_ROUTE)
    async def item(item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, "trace_id": get_trace_id()}

    @app.post("/only-post")
    def only_post() -> PlainTextResponse:
        return PlainTextResponse("posted")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    app.get("/slow-body")(slow_body)
    app.get("/sse")(lambda: sse(5, 0.02))
    app.get("/sse-long")(lambda: sse(200, 0.05))

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> PlainTextResponse:
        tasks.add_task(record_background_trace)
        return PlainTextResponse("ok")

    @app.get("/trace")
    async def trace() -> PlainTextResponse:
        return PlainTextResponse(get_trace_id() or "")

    return app


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 from a thread; yield its base URL."""
    with serve_asgi(app, access_log=False, lifespan="on") as url:
        yield url


@contextmanager
def serve(**instrument_kwargs: Any) -> Iterator[str]:
    """The standard Starlette app, instrumented with ``instrument_kwargs``, served."""
    with serving(instrument_app(create_app(), **instrument_kwargs)) as url:
        yield url


@contextmanager
def serve_fastapi(**instrument_kwargs: Any) -> Iterator[str]:
    """The standard FastAPI app, instrumented with ``instrument_kwargs``, served."""
    with serving(instrument_app(create_fastapi_app(), **instrument_kwargs)) as url:
        yield url
