"""200 concurrent SSE streams on FastAPI/uvicorn: all open at once, every event carrying
the trace ID its generator sees, which is its own request's; the gauges return to 0."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import StreamingResponse

from instrument import get_trace_id, track_sse
from instrument.adapters.fastapi import instrument_app
from tests.helpers import scrape, serve_asgi

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(300)]

STREAMS = 200
EVENTS = 10


def test_200_concurrent_streams_each_carry_their_own_trace() -> None:
    release = threading.Event()  # set by the test once all streams are open

    @track_sse("/stream")
    async def events(tag: str) -> AsyncIterator[str]:
        yield f"data: {tag} 0 {get_trace_id()}\n\n"
        with anyio.move_on_after(60):  # bounded: the server always stops
            while not release.is_set():
                await anyio.sleep(0.01)
        for n in range(1, EVENTS):
            await anyio.sleep(0)
            yield f"data: {tag} {n} {get_trace_id()}\n\n"

    app = FastAPI()

    @app.get("/stream/{tag}")
    async def stream(tag: str) -> StreamingResponse:
        return StreamingResponse(events(tag), media_type="text/event-stream")

    crossed: list[str] = []
    with serve_asgi(instrument_app(app), access_log=False) as url:

        async def main() -> float | None:
            opened = 0
            all_open = asyncio.Event()
            limits = httpx.Limits(max_connections=STREAMS + 10)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

                async def one(i: int) -> None:
                    nonlocal opened
                    sent = f"sse-{i:04d}"
                    async with client.stream("GET", f"/stream/s{i}",
                                             headers={"X-Trace-ID": sent}) as response:
                        if response.headers.get("x-trace-id") != sent:
                            crossed.append(f"{sent}: header {response.headers.get('x-trace-id')}")
                        seen = 0
                        async for line in response.aiter_lines():
                            if not line.startswith("data: "):
                                continue
                            tag, n, tid = line[6:].split(" ")
                            if (tag, int(n), tid) != (f"s{i}", seen, sent):
                                crossed.append(f"{sent}: event {line!r}")
                            seen += 1
                            if seen == 1:
                                opened += 1
                                if opened == STREAMS:
                                    all_open.set()
                        if seen != EVENTS:
                            crossed.append(f"{sent}: {seen} events")

                async def watch() -> float | None:
                    await asyncio.wait_for(all_open.wait(), 60)
                    active = (await client.get("/metrics")).text
                    release.set()
                    return next((float(line.split()[-1]) for line in active.splitlines()
                                 if line.startswith("sse_active_connections{")), None)

                results = await asyncio.gather(watch(), *(one(i) for i in range(STREAMS)))
                return results[0]

        try:
            active_while_open = asyncio.run(main())
        finally:
            release.set()
        metrics = scrape(url + "/metrics")
    assert crossed == []
    assert active_while_open == STREAMS  # all 200 were open at once
    assert metrics.value("sse_active_connections") == 0
    assert metrics.value("sse_connections_total", endpoint="/stream") == STREAMS
    assert metrics.value("sse_streams_closed_total", endpoint="/stream",
                         outcome="completed") == STREAMS
    assert metrics.value("sse_streams_closed_total") == STREAMS
    assert metrics.value("sse_events_total", endpoint="/stream") == STREAMS * EVENTS
    assert metrics.value("sse_stream_duration_seconds_count", endpoint="/stream") == STREAMS
    assert metrics.value("http_requests_total", route="/stream/{tag}", status="200") == STREAMS
    assert metrics.value("http_requests_in_progress") == 0
