"""aiohttp's own server (its access log on): 1,000 requests, 100 at a time, each handler
calling the fake upstream through a ``ClientSession`` with ``client_trace_config``: nothing
crosses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

import instrument
from instrument import get_trace_id, trace_span
from instrument.adapters.aiohttp import client_trace_config, instrument_app
from tests.adapters.apps.aiohttp_app import serving
from tests.conftest import LogCapture
from tests.helpers import scrape, wait_until
from tests.reliability.common import (
    MARKER,
    REQUESTS,
    check_metrics,
    check_nothing_crossed,
    fake_upstream,
    fire,
    upstream_body,
    upstream_path,
)

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(300)]

SESSION = web.AppKey("session", aiohttp.ClientSession)


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
        with serving(app, access_log=True) as url:
            report = fire(url, "aiohttp")
            wait_until(lambda: len(logs.events("request")) == REQUESTS, timeout=30)
            metrics = scrape(url + "/metrics")

    # per request: the handler's line, the toolkit's access line and aiohttp's own
    check_nothing_crossed(report, logs.text.splitlines(), fake, url, "aiohttp", per_request=3,
                          calls_per_request=1)
    check_metrics(metrics, "/work/{tag}")
