"""A real streaming response: a ``@track_sse`` generator served by uvicorn, left by its client.

Under uvicorn a client that goes away reaches the generator as a task
cancellation, not as ``GeneratorExit``. Without a server adapter nothing tells
the stream why it was cancelled, so it counts as ``cancelled`` (the documented
behaviour); with ``instrument_app`` the adapter sees ``http.disconnect`` first
and the stream counts as ``client_disconnect``. Either way it is finalised once
and the active gauge returns to zero.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from instrument import get_trace_id, track_sse
from tests.conftest import LogCapture
from tests.helpers import serve_asgi, value, wait_until

pytestmark = pytest.mark.slow

OUTCOMES = ("completed", "client_disconnect", "error", "cancelled")
TRACE_ID = "uvicorn-test-trace-0001"


@track_sse("/ticks")
async def ticks() -> AsyncIterator[str]:
    """Endless events, each carrying the trace ID current inside the generator."""
    n = 0
    while True:
        yield f"data: {n} {get_trace_id()}\n\n"
        n += 1
        await anyio.sleep(0.01)


@track_sse("/sse")
async def sse_ticks() -> AsyncIterator[Any]:
    n = 0
    while True:
        if n % 3 == 0:
            yield ServerSentEvent(comment="keep-alive")  # a heartbeat, not an event
        yield ServerSentEvent(data=f"{n} {get_trace_id()}", event="tick")
        n += 1
        await anyio.sleep(0.01)


@track_sse("/sync")
def sync_ticks() -> Iterator[str]:
    """A sync generator: Starlette steps it in worker threads."""
    n = 0
    while True:
        yield f"data: {n} {get_trace_id()}\n\n"
        n += 1
        time.sleep(0.01)


async def sync_streaming(request: Request) -> StreamingResponse:
    return StreamingResponse(sync_ticks(), media_type="text/event-stream")


@track_sse("/beats", heartbeat=0.01)
async def slow_ticks() -> AsyncIterator[str]:
    """A slow source: the wrapper fills its silences with heartbeat comments."""
    n = 0
    while True:
        yield f"data: {n} {get_trace_id()}\n\n"
        n += 1
        await anyio.sleep(0.05)


async def heartbeat_streaming(request: Request) -> StreamingResponse:
    return StreamingResponse(slow_ticks(), media_type="text/event-stream")


async def streaming(request: Request) -> StreamingResponse:
    return StreamingResponse(ticks(), media_type="text/event-stream")


async def event_source(request: Request) -> EventSourceResponse:
    return EventSourceResponse(sse_ticks(), ping=60)


def make_app() -> Starlette:
    return Starlette(routes=[Route("/ticks", streaming), Route("/sse", event_source),
                             Route("/sync", sync_streaming),
                             Route("/beats", heartbeat_streaming)])


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` on uvicorn in a background thread; stopped on the way out, pass or fail."""
    with serve_asgi(app, lifespan="off", loop="asyncio", http="h11",
                    timeout_graceful_shutdown=2) as url:
        yield url


def read_then_leave(url: str, wanted: int, heartbeats: int = 0) -> list[str]:
    """Read ``wanted`` data lines (and ``heartbeats`` comments), then close mid-stream."""
    lines: list[str] = []
    comments = 0
    with httpx.Client(timeout=10) as client, client.stream(
            "GET", url, headers={"X-Trace-ID": TRACE_ID}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                comments += 1
            elif line.startswith("data:"):
                lines.append(line)
            if len(lines) >= wanted and comments >= heartbeats:
                break
    return lines


def closed(registry: CollectorRegistry, endpoint: str) -> dict[str, float]:
    return {o: value(registry, "sse_streams_closed_total", endpoint=endpoint, outcome=o)
            for o in OUTCOMES}


def assert_finalised_once(registry: CollectorRegistry, endpoint: str, outcome: str,
                          sent: int) -> None:
    def ended() -> bool:
        gc.collect()  # a sync stream Starlette stopped stepping ends when it is collected
        return sum(closed(registry, endpoint).values()) >= 1

    # the server notices the disconnect on its own schedule: wait for the stream to end
    wait_until(ended, timeout=10)
    assert closed(registry, endpoint) == {o: (1 if o == outcome else 0) for o in OUTCOMES}
    assert value(registry, "sse_connections_total", endpoint=endpoint) == 1
    assert value(registry, "sse_active_connections", endpoint=endpoint) == 0
    assert value(registry, "sse_stream_duration_seconds_count", endpoint=endpoint) == 1
    assert value(registry, "sse_events_total", endpoint=endpoint) >= sent


def test_streaming_response_without_adapter_is_cancelled_when_the_client_leaves(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    with serve(make_app()) as base:
        lines = read_then_leave(base + "/ticks", 3)
        assert_finalised_once(registry, "/ticks", "cancelled", 3)
    assert [line.split()[1] for line in lines] == ["0", "1", "2"]
    # no adapter: the stream runs in a trace of its own, the same in every step
    (trace_id,) = {line.split()[2] for line in lines}
    assert trace_id != TRACE_ID
    (event,) = logs.events("sse_stream")
    assert (event["outcome"], event["trace_id"]) == ("cancelled", trace_id)
    assert event["events"] >= 3


def test_event_source_response_without_adapter_is_cancelled_when_the_client_leaves(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    with serve(make_app()) as base:
        read_then_leave(base + "/sse", 4)
        assert_finalised_once(registry, "/sse", "cancelled", 4)
    assert value(registry, "sse_heartbeats_total", endpoint="/sse") >= 2
    (event,) = logs.events("sse_stream")
    assert event["outcome"] == "cancelled"


def test_sync_generator_left_by_its_client_is_a_disconnect(registry: CollectorRegistry,
                                                           logs: LogCapture) -> None:
    """Starlette stops stepping a sync body in its threads and drops it: no cancellation
    reaches the generator, which ends when collected, half-consumed."""
    with serve(make_app()) as base:
        lines = read_then_leave(base + "/sync", 3)
        assert_finalised_once(registry, "/sync", "client_disconnect", 3)
    (trace_id,) = {line.split()[2] for line in lines}
    (event,) = logs.events("sse_stream")
    assert (event["outcome"], event["trace_id"]) == ("client_disconnect", trace_id)


def test_heartbeat_stream_left_by_its_client_is_finalised_once(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    with serve(make_app()) as base:
        read_then_leave(base + "/beats", 2, heartbeats=2)
        assert_finalised_once(registry, "/beats", "cancelled", 2)
    assert value(registry, "sse_heartbeats_total", endpoint="/beats") >= 2
    (event,) = logs.events("sse_stream")
    assert event["outcome"] == "cancelled" and event["heartbeats"] >= 2


@pytest.mark.parametrize(("path", "sent"), [("/ticks", 3), ("/sse", 4), ("/sync", 3),
                                            ("/beats", 2)])
def test_with_the_adapter_a_client_that_leaves_is_a_disconnect(
        path: str, sent: int, registry: CollectorRegistry, logs: LogCapture) -> None:
    adapter = pytest.importorskip("instrument.adapters.starlette")
    app = adapter.instrument_app(make_app())
    with serve(app) as base:
        lines = read_then_leave(base + path, sent)
        assert_finalised_once(registry, path, "client_disconnect", sent)
    # the request's trace ID is current inside the generator in every step
    assert {line.split()[-1] for line in lines} == {TRACE_ID}
    (event,) = logs.events("sse_stream")
    assert (event["outcome"], event["trace_id"]) == ("client_disconnect", TRACE_ID)
