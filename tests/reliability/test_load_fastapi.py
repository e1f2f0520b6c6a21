"""FastAPI on uvicorn: 1,000 requests, 100 at a time, each handler calling the fake upstream
through the instrumented httpx client and through the openai SDK (``instrument_openai``):
nothing crosses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from loguru import logger
from starlette.responses import PlainTextResponse

import instrument
from instrument import get_trace_id, trace_span
from instrument.adapters.fastapi import instrument_app
from instrument.adapters.httpx import instrument_client
from instrument.adapters.openai import instrument_openai
from tests.conftest import LogCapture
from tests.helpers import scrape, serve_asgi, wait_until
from tests.reliability.common import (
    MARKER,
    MODEL,
    REQUESTS,
    check_metrics,
    check_nothing_crossed,
    fake_upstream,
    fire,
    marker,
    upstream_body,
    upstream_path,
)

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(300)]


def test_fastapi_on_uvicorn_keeps_every_trace_apart() -> None:
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    with fake_upstream() as fake:
        clients: dict[str, Any] = {}

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            # made and closed on uvicorn's loop, the one that uses them
            async with instrument_client(httpx.AsyncClient(timeout=30)) as http, \
                    instrument_openai(openai.AsyncOpenAI(base_url=fake.openai_url,
                                                         api_key="sk-test", max_retries=0)) as sdk:
                clients.update(http=http, sdk=sdk)
                yield

        app = FastAPI(lifespan=lifespan)

        @app.get("/work/{tag}")
        async def work(tag: str) -> PlainTextResponse:
            i = int(MARKER.fullmatch(tag).group(1))  # type: ignore[union-attr]
            with trace_span("upstream"):
                logger.info("handling {}", tag)
                (await clients["http"].post(upstream_path(fake.url, i), json=upstream_body(i))
                 ).raise_for_status()
                await clients["sdk"].chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": marker(i)}],
                    extra_query={"m": marker(i)})
            return PlainTextResponse(get_trace_id() or "")

        with serve_asgi(instrument_app(app), access_log=True, lifespan="on",
                        timeout_keep_alive=60) as url:
            report = fire(url, "fastapi")
            wait_until(lambda: len(logs.events("request")) == REQUESTS, timeout=30)
            metrics = scrape(url + "/metrics")

    # per request: the handler's line, the httpx client's, the SDK's httpx line, the
    # provider call (by its span), the toolkit's access line and uvicorn's own
    check_nothing_crossed(report, logs.text.splitlines(), fake, url, "fastapi", per_request=6,
                          calls_per_request=2)
    check_metrics(metrics, "/work/{tag}")
    assert metrics.value("provider_requests_total", provider="openai", model=MODEL,
                         status="ok") == REQUESTS
    assert metrics.value("provider_request_duration_seconds_count", provider="openai") == REQUESTS
    assert metrics.value("provider_inflight_requests") == 0
