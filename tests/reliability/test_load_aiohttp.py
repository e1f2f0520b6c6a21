"""aiohttp's own server (its access log on): 1,000 requests, 100 at a time, each handler
calling the fake upstream through a ``ClientSession`` with ``client_trace_config``: nothing
crosses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

import instrument
from instrument import get_trace_id, trace_span
from instrument.adapters.aiohttp import client_trace_config, instrument_app
from tests.conftest import LogCapture
from tests.helpers import scrape, wait_until
from tests.reliability.common import (
    MARKER,
    REQUESTS,
    check_logs,
    check_metrics,
    check_upstream,
    fake_upstream,
    fire,
    upstream_body,
    upstream_path,
)

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(300)]

SESSION = web.AppKey("session", aiohttp.ClientSession)


@contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """``app`` on AppRunner/TCPSite (aiohttp's access logger on) in a thread with its own
    loop; cleaned up and the loop closed on the way out, pass or fail."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, shutdown_timeout=2)
    address: list[str] = []
    ready = threading.Event()

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

    thread = threading.Thread(target=run, name="aiohttp-reliability", daemon=True)
    thread.start()
    ready.wait(10)
    try:
        assert address, "aiohttp did not start"
        yield address[0]
    finally:
        if address:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the aiohttp loop did not stop"
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_aiohttp_server_keeps_every_trace_apart() -> None:
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    with fake_upstream() as fake:

        async def session(app: web.Application) -> AsyncIterator[None]:
            connector = aiohttp.TCPConnector(limit=100)
            async with aiohttp.ClientSession(connector=connector,
                                             trace_configs=[client_trace_config()]) as made:
                app[SESSION] = made
                yield

        async def work(request: web.Request) -> web.Response:
            tag = request.match_info["tag"]
            i = int(MARKER.fullmatch(tag).group(1))  # type: ignore[union-attr]
            with trace_span("upstream"):
                logger.info("handling {}", tag)
                async with request.app[SESSION].post(upstream_path(fake.url, i),
                                                     json=upstream_body(i)) as response:
                    response.raise_for_status()
                    await response.read()
            return web.Response(text=get_trace_id() or "")

        app = web.Application()
        app.router.add_get("/work/{tag}", work)
        app.cleanup_ctx.append(session)
        instrument_app(app)
        with serving(app) as url:
            report = fire(url, "aiohttp")
            wait_until(lambda: len(logs.events("request")) == REQUESTS, timeout=30)
            metrics = scrape(url + "/metrics")

    # per request: the handler's line, the toolkit's access line and aiohttp's own
    check_logs(report, logs.text.splitlines(), "aiohttp", per_request=3, skip=lambda r: (
        r["message"].startswith(f"HTTP Request: GET {url}/work/")  # the load client's
        or (r["logger"] == "uvicorn.access" and "/v1/chat/completions" in r["message"])))
    check_upstream(report, fake, "aiohttp", calls_per_request=1)
    assert report.mismatches == 0, (report.responses[:5], report.logs[:5], report.upstream[:5])
    check_metrics(metrics, "/work/{tag}")
