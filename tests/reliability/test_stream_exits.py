"""Every way a stream ends, under real servers: FastAPI on uvicorn and aiohttp's own server.

Each stream is a ``@track_sse`` generator relaying a ``@track_provider`` streaming call
(``stream_app``). Clients leave before the first event, mid-stream and after the last; the
upstream breaks mid-stream; the client's read timeout and the handler's own deadline
(anyio's ``fail_after`` under FastAPI, ``asyncio.timeout`` under aiohttp) cut a stream
short; the server shuts down gracefully with streams open. Read from a real scrape of a
metrics server that outlives the app's, and from every JSON log line: each stream closed
exactly once with its outcome, every gauge back to 0, no task left in the server's loop,
no thread left after it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import instrument
from tests.conftest import LogCapture
from tests.helpers import Scrape, scrape, wait_until
from tests.reliability.common import Served, serve_aiohttp, serve_uvicorn
from tests.reliability.stream_app import Plan, aiohttp_app, fastapi_app

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(120)]

#: streams per scenario, all at once
EACH = 3
OUTCOMES = ("completed", "client_disconnect", "error", "cancelled")


@dataclass(frozen=True)
class Scenario:
    """One way out: the upstream's plan, what the client does, what must be recorded."""

    plan: Callable[[], Plan]
    client: str
    outcome: str  # sse_streams_closed_total / the sse_stream line
    provider: str  # provider_requests_total status / the provider_call line


SCENARIOS = {
    # read to the end of the body, then the connection closes: not a disconnect
    "after_last": Scenario(lambda: Plan(tokens=5), "read_all", "completed", "ok"),
    # headers read, no event yet (the upstream holds its first token)
    "before_first": Scenario(lambda: Plan(tokens=3000, hold_at=0, trickle_from=0),
                             "leave_at_headers", "client_disconnect", "cancelled"),
    "mid_stream": Scenario(lambda: Plan(tokens=3000, trickle_from=3), "leave_after_3",
                           "client_disconnect", "cancelled"),
    "upstream_breaks": Scenario(lambda: Plan(tokens=10, fail_at=3), "read_until_cut",
                                "error", "error"),
    "client_timeout": Scenario(lambda: Plan(tokens=3000, hold_at=0, trickle_from=0),
                               "time_out", "client_disconnect", "cancelled"),
    # the deadline cancels the upstream call and raises TimeoutError out of the generator
    "handler_deadline": Scenario(lambda: Plan(tokens=5, hold_at=0, deadline=0.3),
                                 "read_until_cut", "error", "cancelled"),
}
#: open when the server shuts down: cancelled by the server, not left by their client
SHUTDOWN = Scenario(lambda: Plan(tokens=5, hold_at=1), "read_until_cut", "cancelled",
                    "cancelled")


@dataclass
class Stream:
    trace_id: str
    scenario: Scenario
    plan: Plan
    path: str
    events: list[str]


def make_streams(prefix: str, scenarios: dict[str, Scenario], count: int) -> list[Stream]:
    return [Stream(f"{prefix}-{name}-{i}", scenario, scenario.plan(), f"/chat/{name}-{i}", [])
            for name, scenario in scenarios.items() for i in range(count)]


async def run_client(url: str, stream: Stream, opened: threading.Event | None = None) -> None:
    """One client, on a connection of its own (closing it is the client leaving)."""
    read_timeout = 0.3 if stream.scenario.client == "time_out" else 30
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=read_timeout)
                                 ) as client:
        try:
            async with client.stream("GET", stream.path,
                                     headers={"X-Trace-ID": stream.trace_id}) as response:
                assert response.status_code == 200
                assert response.headers["x-trace-id"] == stream.trace_id
                if stream.scenario.client == "leave_at_headers":
                    return
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        stream.events.append(line)
                        if opened is not None:
                            opened.set()
                    if stream.scenario.client == "leave_after_3" and len(stream.events) == 3:
                        return
        except httpx.ReadTimeout:
            assert stream.scenario.client == "time_out", stream.trace_id
        except (httpx.RemoteProtocolError, httpx.ReadError):  # the server cut the body short
            assert stream.scenario.client == "read_until_cut", stream.trace_id
        finally:
            stream.plan.release.set()  # an upstream held for a client that has left goes on


def closed(page: Scrape) -> dict[str, float]:
    return {o: page.value("sse_streams_closed_total", endpoint="/chat", outcome=o) or 0
            for o in OUTCOMES}


def ended(page: Scrape, streams: int) -> bool:
    """Every stream and every provider call has ended (the server notices on its own time)."""
    calls = page.value("provider_requests_total", provider="fake-llm") or 0
    return sum(closed(page).values()) >= streams and calls >= streams


def expected(streams: list[Stream]) -> dict[str, int]:
    found = Counter(s.scenario.outcome for s in streams)
    return {o: found[o] for o in OUTCOMES}


def check_gauges(page: Scrape, streams: list[Stream]) -> None:
    """Every stream counted once: opened, closed with its outcome, provider call ended with
    its status; nothing open, nothing in progress, nothing in flight."""
    provider = Counter(s.scenario.provider for s in streams)
    assert closed(page) == expected(streams)
    assert page.value("sse_connections_total", endpoint="/chat") == len(streams)
    assert page.value("sse_stream_duration_seconds_count", endpoint="/chat") == len(streams)
    assert {status: page.value("provider_requests_total", provider="fake-llm", status=status)
            or 0 for status in ("ok", "error", "cancelled")} == {
                status: provider[status] for status in ("ok", "error", "cancelled")}
    assert page.value("http_requests_total", route="/chat/{plan}") == len(streams)
    assert page.value("sse_active_connections") == 0
    assert page.value("http_requests_in_progress") == 0
    assert page.value("provider_inflight_requests") == 0


def check_logs(logs: LogCapture, streams: list[Stream]) -> None:
    """Each stream's one ``sse_stream`` line and one ``provider_call`` line, under its own
    trace; the events it was sent carried its trace too."""
    records = [json.loads(line) for line in logs.text.splitlines()]
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_trace.setdefault(record.get("trace_id") or "", []).append(record)
    wrong = []
    for s in streams:
        mine = by_trace.get(s.trace_id, [])
        ends = [r["outcome"] for r in mine if r.get("event") == "sse_stream"]
        calls = [r["status"] for r in mine if r.get("event") == "provider_call"]
        if ends != [s.scenario.outcome] or calls != [s.scenario.provider]:
            wrong.append(f"{s.trace_id}: sse_stream {ends}, provider_call {calls}")
        if any(line.split()[1] != s.trace_id for line in s.events):
            wrong.append(f"{s.trace_id}: events {s.events[:3]}")
    assert wrong == []
    assert sum(r.get("event") == "sse_stream" for r in records) == len(streams)


SERVERS: dict[str, Callable[[dict[str, Plan]], AbstractContextManager[Served]]] = {
    "fastapi-uvicorn": lambda plans: serve_uvicorn(fastapi_app(plans),
                                                   timeout_graceful_shutdown=1),
    "aiohttp": lambda plans: serve_aiohttp(aiohttp_app(plans), shutdown_timeout=1),
}


@pytest.fixture
def metrics_server(registry: CollectorRegistry) -> Iterator[str]:
    """The test's registry served on its own: it is still there once the app's server is not."""
    server = instrument.start_http_server(0, "127.0.0.1", registry=registry)
    try:
        yield server.url + "/metrics"
    finally:
        server.shutdown()


@pytest.mark.parametrize("server", list(SERVERS))
def test_every_stream_exit_is_closed_once_with_its_outcome(server: str, metrics_server: str
                                                           ) -> None:
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    streams = make_streams(server, SCENARIOS, EACH)
    at_shutdown = make_streams(server, {"shutdown": SHUTDOWN}, EACH)
    plans = {s.path.removeprefix("/chat/"): s.plan for s in streams + at_shutdown}
    threads_before = set(threading.enumerate())

    with SERVERS[server](plans) as served:
        idle = served.tasks()

        async def leave_every_way() -> None:
            await asyncio.gather(*(run_client(served.url, s) for s in streams))

        asyncio.run(leave_every_way())
        wait_until(lambda: ended(scrape(metrics_server), len(streams)), timeout=30)
        page = scrape(metrics_server)
        check_gauges(page, streams)
        # each stream's request task, its body's and its provider call's are gone
        left = {repr(t.get_coro()) for t in served.tasks() - idle}
        assert left == set()

        # streams open (one event read each) when the server shuts down
        opened = [threading.Event() for _ in at_shutdown]

        def clients() -> None:
            async def read() -> None:
                await asyncio.gather(*(run_client(served.url, s, e)
                                       for s, e in zip(at_shutdown, opened, strict=True)))

            asyncio.run(read())

        reader = threading.Thread(target=clients, name="shutdown-clients")
        reader.start()
        try:
            wait_until(lambda: all(e.is_set() for e in opened), timeout=30)
            served.stop()  # graceful: waits 1 s for the streams, then cancels them
        finally:
            for s in at_shutdown:
                s.plan.release.set()
            reader.join(timeout=30)
    assert served.leftover == []  # nothing pending in the server's loop once it stopped
    assert not reader.is_alive()
    assert set(threading.enumerate()) <= threads_before
    every = streams + at_shutdown
    check_gauges(scrape(metrics_server), every)
    check_logs(logs, every)
