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
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import instrument
from tests.adapters.apps.flask_app import serving
from tests.adapters.test_gunicorn import _kill_group
from tests.conftest import LogCapture
from tests.helpers import Scrape, free_port, scrape, wait_until
from tests.reliability.common import Served, serve_aiohttp, serve_uvicorn
from tests.reliability.flask_stream_app import create_app as create_flask_app
from tests.reliability.flask_stream_app import released_by
from tests.reliability.stream_app import Plan, aiohttp_app, fastapi_app

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
#: streams per scenario, all at once
EACH = 3
OUTCOMES = ("completed", "client_disconnect", "error", "cancelled")


@dataclass(frozen=True)
class Scenario:
    """One way out: the upstream's plan, what the client does, what must be recorded."""

    plan: Callable[[], Plan]
    client: str  # read_all, leave_at_headers, leave_after_3, read_until_cut, time_out
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
#: open when the server shuts down: cancelled by the server, not left by their client.
#: ``stalled``: the client stopped reading, so the server is blocked sending to it
SHUTDOWN = {
    "shutdown": Scenario(lambda: Plan(tokens=5, hold_at=1), "read_until_cut", "cancelled",
                         "cancelled"),
    "shutdown_stalled": Scenario(lambda: Plan(tokens=2000, pad=65536), "stall", "cancelled",
                                 "cancelled"),
}


@dataclass
class Stream:
    trace_id: str
    scenario: Scenario
    path: str
    #: lets a held upstream go on (once its client has left)
    release: Callable[[], None]
    events: list[str] = field(default_factory=list)
    plan: Plan | None = None


def make_streams(prefix: str, scenarios: dict[str, Scenario], count: int) -> list[Stream]:
    streams = []
    for name, scenario in scenarios.items():
        for i in range(count):
            plan = scenario.plan()
            streams.append(Stream(f"{prefix}-{name}-{i}", scenario, f"/chat/{name}-{i}",
                                  plan.release.set, plan=plan))
    return streams


async def run_client(url: str, stream: Stream, opened: threading.Event | None = None,
                     stopped: threading.Event | None = None) -> None:
    """One client, on a connection of its own (closing it is the client leaving). A ``stall``
    client stops reading after its first event and holds on until ``stopped``."""
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
                        if stream.scenario.client == "stall":
                            while stopped is not None and not stopped.is_set():
                                await asyncio.sleep(0.05)
                            return
                    if stream.scenario.client == "leave_after_3" and len(stream.events) == 3:
                        return
        except httpx.ReadTimeout:
            assert stream.scenario.client == "time_out", stream.trace_id
        except (httpx.RemoteProtocolError, httpx.ReadError):  # the server cut the body short
            assert stream.scenario.client == "read_until_cut", stream.trace_id
        finally:
            stream.release()  # an upstream held for a client that has left goes on


def closed(page: Scrape) -> dict[str, float]:
    return {o: page.value("sse_streams_closed_total", outcome=o) or 0 for o in OUTCOMES}


def ended(page: Scrape, streams: int) -> bool:
    """Every stream and every provider call has ended (the server notices on its own time)."""
    calls = page.value("provider_requests_total", provider="fake-llm") or 0
    return sum(closed(page).values()) >= streams and calls >= streams


def settle(metrics_server: str, streams: list[Stream]) -> None:
    """Wait for every stream and provider call to end; if some never do, the checks that
    follow say which."""
    try:
        wait_until(lambda: ended(scrape(metrics_server), len(streams)), timeout=30)
    except AssertionError:
        pass


def expected(streams: list[Stream]) -> dict[str, int]:
    found = Counter(s.scenario.outcome for s in streams)
    return {o: found[o] for o in OUTCOMES}


def check_gauges(page: Scrape, streams: list[Stream]) -> None:
    """Every stream counted once: opened, closed with its outcome, provider call ended with
    its status; nothing open, nothing in progress, nothing in flight."""
    provider = Counter(s.scenario.provider for s in streams)
    assert closed(page) == expected(streams)
    assert page.value("sse_connections_total") == len(streams)
    assert page.value("sse_stream_duration_seconds_count") == len(streams)
    assert {status: page.value("provider_requests_total", provider="fake-llm", status=status)
            or 0 for status in ("ok", "error", "cancelled")} == {
                status: provider[status] for status in ("ok", "error", "cancelled")}
    assert page.value("http_requests_total") == len(streams)
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
    at_shutdown = make_streams(server, SHUTDOWN, EACH)
    plans = {s.path.removeprefix("/chat/"): s.plan for s in streams + at_shutdown
             if s.plan is not None}
    threads_before = set(threading.enumerate())

    with SERVERS[server](plans) as served:
        idle = served.tasks()

        async def leave_every_way() -> None:
            await asyncio.gather(*(run_client(served.url, s) for s in streams))

        asyncio.run(leave_every_way())
        settle(metrics_server, streams)
        page = scrape(metrics_server)
        check_gauges(page, streams)
        # each stream's request task, its body's and its provider call's are gone
        left = {repr(t.get_coro()) for t in served.tasks() - idle}
        assert left == set()

        # streams open (one event read each) when the server shuts down
        opened = [threading.Event() for _ in at_shutdown]
        stopped = threading.Event()

        def clients() -> None:
            async def read() -> None:
                await asyncio.gather(*(run_client(served.url, s, e, stopped)
                                       for s, e in zip(at_shutdown, opened, strict=True)))

            asyncio.run(read())

        reader = threading.Thread(target=clients, name="shutdown-clients")
        reader.start()
        try:
            wait_until(lambda: all(e.is_set() for e in opened), timeout=30)
            served.stop()  # graceful: waits 1 s for the streams, then cancels them
        finally:
            stopped.set()
            for s in at_shutdown:
                s.release()
            reader.join(timeout=30)
    assert served.leftover == []  # nothing pending in the server's loop once it stopped
    assert not reader.is_alive()
    assert set(threading.enumerate()) <= threads_before
    every = streams + at_shutdown
    check_gauges(scrape(metrics_server), every)
    check_logs(logs, every)


#: under WSGI a held first token holds the headers too (werkzeug and gunicorn send them with
#: the first chunk): the client's read timeout is how a client leaves before the first event
WSGI_SCENARIOS = {name: SCENARIOS[name] for name in
                  ("after_last", "mid_stream", "upstream_breaks", "client_timeout")}
WSGI_PLANS = {"after_last": "t5", "mid_stream": "t3000s3", "upstream_breaks": "t10f3",
              "client_timeout": "t3000h0s0"}


def wsgi_streams(released: dict[str, threading.Event]) -> list[Stream]:
    """Each scenario on the ``@track_sse`` route and on the plain generator route."""
    streams = []
    for kind in ("chat", "plain"):
        for name, scenario in WSGI_SCENARIOS.items():
            for i in range(EACH):
                plan = f"{WSGI_PLANS[name]}-{name}{i}"
                event = released.setdefault(plan, threading.Event())
                streams.append(Stream(f"werkzeug-{kind}-{name}-{i}", scenario,
                                      f"/{kind}/{plan}", event.set))
    return streams


def test_wsgi_stream_exits_under_werkzeug(metrics_server: str) -> None:
    """Flask on werkzeug's threaded server: the ``@track_sse`` body and a plain SSE body (which
    the request measures itself) closed once each, however they end."""
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    released: dict[str, threading.Event] = {}
    streams = wsgi_streams(released)
    threads_before = set(threading.enumerate())
    with serving(create_flask_app(released_by(released))) as url:

        async def leave_every_way() -> None:
            await asyncio.gather(*(run_client(url, s) for s in streams))

        asyncio.run(leave_every_way())
        settle(metrics_server, streams)
        check_logs(logs, streams)  # names any stream that did not end as it should
        # werkzeug's handler threads end with their requests; its serving thread is left
        wait_until(lambda: {t.name for t in set(threading.enumerate()) - threads_before}
                   == {"flask-test-server"}, timeout=30)
    assert set(threading.enumerate()) <= threads_before
    check_gauges(scrape(metrics_server), streams)


def test_sigterm_to_gunicorn_with_streams_open(tmp_path: Path) -> None:
    """gunicorn (one gthread worker, ``graceful_timeout`` 2 s) gets SIGTERM with streams open:
    those that end within the graceful timeout are closed once, completed; those still open
    then die with the worker (SIGKILLed by the master) and are never closed. The server is
    gone afterwards: what it recorded is read from its multiprocess files and its log."""
    (tmp_path / "gunicorn.conf.py").write_text(
        "from instrument.adapters.flask import gunicorn_child_exit as child_exit\n")
    multiproc, logs, release = tmp_path / "multiproc", tmp_path / "logs", tmp_path / "release"
    for path in (multiproc, logs, release):
        path.mkdir()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "RELIABILITY_LOG_DIR": str(logs), "RELIABILITY_RELEASE": str(release)}
    ending, outlasting = Scenario(Plan, "read_until_cut", "completed", "ok"), Scenario(
        Plan, "read_until_cut", "never", "never")
    streams = [Stream(f"gunicorn-{kind}-{tag}{i}", scenario, f"/{kind}/t5h1-{tag}{i}",
                      (release / f"t5h1-{tag}{i}").touch)
               for kind in ("chat", "plain") for tag, scenario in (("end", ending),
                                                                  ("outlast", outlasting))
               for i in range(2)]
    with (tmp_path / "gunicorn.out").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread",
             "--threads", "8", "--graceful-timeout", "2", "--no-control-socket",
             "tests.reliability.flask_stream_app:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    opened = [threading.Event() for _ in streams]

    def clients() -> None:
        async def read() -> None:
            await asyncio.gather(*(run_client(url, s, e)
                                   for s, e in zip(streams, opened, strict=True)))

        asyncio.run(read())

    reader = threading.Thread(target=clients, name="sigterm-clients")
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "gunicorn.out").read_text()
            try:
                return httpx.get(url + "/metrics/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=30, interval=0.1)
        reader.start()
        wait_until(lambda: all(e.is_set() for e in opened), timeout=30)
        proc.send_signal(signal.SIGTERM)
        for s in streams:
            if s.scenario is ending:  # these end within the graceful timeout
                s.release()
        assert proc.wait(timeout=30) == 0
    finally:
        if reader.is_alive():
            reader.join(timeout=30)
        _kill_group(proc)
    assert not reader.is_alive()

    done = [s for s in streams if s.scenario is ending]
    cut = [s for s in streams if s.scenario is outlasting]
    assert all(s.events[-1].endswith("[DONE]") for s in done)
    assert all(not s.events[-1].endswith("[DONE]") for s in cut)
    files = CollectorRegistry()
    MultiProcessCollector(files, path=str(multiproc))  # type: ignore[no-untyped-call]
    page = Scrape(generate_latest(files).decode())
    assert closed(page) == expected(done)
    assert page.value("sse_connections_total") == len(streams)
    assert page.value("http_requests_total") == len(done)
    assert page.value("provider_requests_total", status="ok") == len(done)
    assert page.value("provider_requests_total") == len(done)
    # the SIGKILLed worker was not reaped before the master exited: no child_exit for it,
    # so its live gauges stay in its file until the directory is wiped at the next start
    assert {name: page.value(name) for name in ("sse_active_connections",
                                                "http_requests_in_progress",
                                                "provider_inflight_requests")} == dict.fromkeys(
        ("sse_active_connections", "http_requests_in_progress", "provider_inflight_requests"),
        len(cut))
    lines = "".join(p.read_text() for p in logs.glob("worker-*.log"))
    records = [json.loads(line) for line in lines.splitlines()]
    ends = Counter(r["trace_id"] for r in records if r.get("event") == "sse_stream")
    assert ends == Counter(s.trace_id for s in done)
