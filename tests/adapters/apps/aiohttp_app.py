"""The standard aiohttp app of the shared server suite, served by aiohttp's own server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from instrument import get_trace_id
from instrument.adapters.aiohttp import instrument_app

ITEM_ROUTE = "/items/{item_id}"
BACKGROUND_TRACE_IDS: list[str | None] = []


async def _stream(request: web.Request, content_type: str, chunks: Any,
                  interval: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    for i, chunk in enumerate(chunks):
        if i:
            await asyncio.sleep(interval)
        await response.write(chunk.encode())
    await response.write_eof()
    return response


def create_app() -> web.Application:
    """The routes every server adapter's test app provides (aiohttp's default error handling)."""
    routes = web.RouteTableDef()
    background: set[asyncio.Task[None]] = set()

    @routes.get(ITEM_ROUTE)
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"item_id": request.match_info["item_id"],
                                  "trace_id": get_trace_id()})

    @routes.post("/only-post")
    async def only_post(request: web.Request) -> web.Response:
        return web.Response(text="posted")

    @routes.get("/boom")
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    @routes.get("/slow-body")
    async def slow_body(request: web.Request) -> web.StreamResponse:
        return await _stream(request, "text/plain", [f"chunk {i}\n" for i in range(3)], 0.2)

    @routes.get("/sse")
    async def sse(request: web.Request) -> web.StreamResponse:
        return await _stream(request, "text/event-stream",
                             [f"data: {i}\n\n" for i in range(5)], 0.02)

    @routes.get("/sse-long")
    async def sse_long(request: web.Request) -> web.StreamResponse:
        return await _stream(request, "text/event-stream",
                             [f"data: {i}\n\n" for i in range(200)], 0.05)

    @routes.get("/background")
    async def start_background(request: web.Request) -> web.Response:
        async def job() -> None:
            await asyncio.sleep(0.5)
            BACKGROUND_TRACE_IDS.append(get_trace_id())

        task = asyncio.create_task(job())
        background.add(task)  # keep a reference until it is done
        task.add_done_callback(background.discard)
        return web.Response(text="ok")

    @routes.get("/trace")
    async def trace(request: web.Request) -> web.Response:
        return web.Response(text=get_trace_id() or "")

    app = web.Application()
    app.add_routes(routes)
    return app


@contextmanager
def serving(app: web.Application, access_log: bool = False) -> Iterator[str]:
    """Serve ``app`` with AppRunner/TCPSite on 127.0.0.1 from a thread with its own loop
    (``access_log``: aiohttp's own access logger on)."""
    loop = asyncio.new_event_loop()
    runner = (web.AppRunner(app, shutdown_timeout=2) if access_log
              else web.AppRunner(app, access_log=None, shutdown_timeout=1))
    ready = threading.Event()
    address: list[str] = []

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        address.append(f"http://{host}:{port}")

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="aiohttp-test-server", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        assert address, "the aiohttp test server did not start"
        yield address[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        pending = asyncio.all_tasks(loop)  # e.g. a background job still sleeping
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextmanager
def serve(**instrument_kwargs: Any) -> Iterator[str]:
    """The standard app, instrumented with ``instrument_kwargs``, served; yields the base URL."""
    app = create_app()
    instrument_app(app, **instrument_kwargs)
    with serving(app) as url:
        yield url
