"""What the load tests share: a quiet fake upstream, the per-request marker, the checks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fakes.llm_server import FakeLLM
from tests.helpers import Scrape, serve_asgi
from tests.reliability import planted

REQUESTS = 1000
CONCURRENCY = 100
MODEL = "gpt-4o-mini"
#: every request's own token: in its path, its upstream URL and body, its handler's log line
MARKER = re.compile(r"W(\d{4})X")


def marker(i: int) -> str:
    return f"W{i:04d}X"


def trace_id(framework: str, i: int) -> str:
    return f"rel-{framework}-{i:04d}"


@contextmanager
def fake_upstream() -> Iterator[FakeLLM]:
    """The fake provider (not instrumented: its access lines carry no trace). Idle
    connections are kept a minute: a client reusing one just as uvicorn's 5 s keep-alive
    closes it would see a dropped connection, a harness race, not the toolkit's."""
    fake = FakeLLM()
    with serve_asgi(fake.app(), timeout_graceful_shutdown=2, timeout_keep_alive=60) as url:
        fake.url = url
        try:
            yield fake
        finally:
            fake.release.set()


def upstream_body(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": marker(i)}]}


def upstream_path(fake_url: str, i: int) -> str:
    return f"{fake_url}/v1/chat/completions?m={marker(i)}"


@dataclass
class Report:
    """Mismatches found; empty lists mean nothing crossed."""

    responses: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)
    lines_per_request: dict[int, int] = field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return len(self.responses) + len(self.logs) + len(self.upstream)


def fire(base_url: str, framework: str, path: Callable[[int], str] = lambda i: f"/work/{marker(i)}",
         n: int = REQUESTS, concurrency: int = CONCURRENCY) -> Report:
    """``n`` GETs, ``concurrency`` at a time, each with its own X-Trace-ID; the response's
    body and header must both be that ID. Each also carries the planted secrets (headers and
    query string, ``planted``) and the canary, for the search of the whole run's lines."""
    report = Report()

    async def main() -> None:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

            async def one(i: int) -> None:
                sent = trace_id(framework, i)
                async with gate:
                    response = await client.get(
                        path(i), headers={"X-Trace-ID": sent, **planted.request_headers()},
                        params={**planted.request_params(), "note": planted.CANARY})
                if (response.status_code, response.text, response.headers.get("x-trace-id")) \
                        != (200, sent, sent):
                    report.responses.append(f"{sent}: {response.status_code} "
                                            f"{response.text[:80]!r} "
                                            f"{response.headers.get('x-trace-id')!r}")

            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(main())
    return report


def check_logs(report: Report, lines: list[str], framework: str, per_request: int,
               skip: Callable[[dict[str, Any]], bool] = lambda record: False) -> None:
    """Every line is one JSON object. A line naming a request (its marker) carries that
    request's trace ID; a line naming none but carrying a span ID belongs to the request whose
    marked lines had that span; any other line carries no request's trace ID. Each request has
    ``per_request`` lines. ``skip``: lines not of the server under test (the load client's)."""
    prefix = f"rel-{framework}-"
    records = [json.loads(line) for line in lines]
    span_owner: dict[str, int] = {}
    unmarked: list[dict[str, Any]] = []
    for line, record in zip(lines, records, strict=True):
        if skip(record):
            continue
        found = set(MARKER.findall(line))
        if not found:
            unmarked.append(record)
            continue
        if len(found) != 1:
            report.logs.append(f"a line names several requests: {line[:300]}")
            continue
        i = int(found.pop())
        report.lines_per_request[i] = report.lines_per_request.get(i, 0) + 1
        if record.get("trace_id") != trace_id(framework, i):
            report.logs.append(f"request {i} logged under {record.get('trace_id')!r}: "
                               f"{line[:300]}")
        if record.get("span_id") and span_owner.setdefault(record["span_id"], i) != i:
            report.logs.append(f"span {record['span_id']} in requests {i} and "
                               f"{span_owner[record['span_id']]}")
    for record in unmarked:
        tid, owner = record.get("trace_id"), span_owner.get(record.get("span_id") or "")
        if owner is not None:
            report.lines_per_request[owner] += 1
            if tid != trace_id(framework, owner):
                report.logs.append(f"request {owner}'s span logged under {tid!r}: {record}")
        elif isinstance(tid, str) and tid.startswith(prefix):
            report.logs.append(f"a line of trace {tid} names no request nor span: {record}")
    for i in range(REQUESTS):
        if report.lines_per_request.get(i, 0) != per_request:
            report.logs.append(f"request {i}: {report.lines_per_request.get(i, 0)} lines, "
                               f"{per_request} expected")


def check_upstream(report: Report, fake: FakeLLM, framework: str, calls_per_request: int) -> None:
    """The upstream saw each request's calls, each with that request's X-Trace-ID."""
    seen: dict[int, int] = {}
    for received in fake.received:
        (m,) = MARKER.findall(json.dumps(received.body))
        i = int(m)
        seen[i] = seen.get(i, 0) + 1
        if received.headers.get("x-trace-id") != trace_id(framework, i):
            report.upstream.append(f"request {i}'s upstream call came with "
                                   f"{received.headers.get('x-trace-id')!r}")
    for i in range(REQUESTS):
        if seen.get(i, 0) != calls_per_request:
            report.upstream.append(f"request {i}: {seen.get(i, 0)} upstream calls")


def check_metrics(metrics: Scrape, route: str, upstream_calls: int = REQUESTS) -> dict[str, float]:
    """The counters are exact: every request, every upstream call, every span, once; nothing in
    progress. Returns what was read, for the report."""
    read = {
        "http_requests_total": metrics.value("http_requests_total", route=route, status="200"),
        "all_http_requests_total": metrics.value("http_requests_total"),
        "http_request_duration_seconds_count":
            metrics.value("http_request_duration_seconds_count", route=route),
        "http_requests_in_progress": metrics.value("http_requests_in_progress"),
        "http_client_requests_total": metrics.value("http_client_requests_total", status="200"),
        "http_client_request_duration_seconds_count":
            metrics.value("http_client_request_duration_seconds_count"),
        "span_duration_seconds_count": metrics.value("span_duration_seconds_count",
                                                     span="upstream"),
        "trace_requests_total": metrics.value("trace_requests_total"),
        "instrument_internal_errors_total": metrics.value("instrument_internal_errors_total"),
    }
    assert read == {
        "http_requests_total": REQUESTS, "all_http_requests_total": REQUESTS,
        "http_request_duration_seconds_count": REQUESTS, "http_requests_in_progress": 0,
        "http_client_requests_total": upstream_calls,
        "http_client_request_duration_seconds_count": upstream_calls,
        "span_duration_seconds_count": REQUESTS, "trace_requests_total": REQUESTS,
        "instrument_internal_errors_total": None}
    return read


def not_the_requests_lines(url: str) -> Callable[[dict[str, Any]], bool]:
    """Lines that belong to no served request: the load client's own and the fake
    upstream's access lines."""
    return lambda r: (r["message"].startswith(f"HTTP Request: GET {url}/work/")
                      or (r["logger"] == "uvicorn.access"
                          and "/v1/chat/completions" in r["message"]))


def check_nothing_crossed(report: Report, lines: list[str], fake: FakeLLM, url: str,
                          framework: str, per_request: int, calls_per_request: int) -> None:
    """Every request's ID on its response, on each of its ``per_request`` log lines and on
    each of its upstream calls: not one mismatch."""
    check_logs(report, lines, framework, per_request, skip=not_the_requests_lines(url))
    check_upstream(report, fake, framework, calls_per_request=calls_per_request)
    assert report.mismatches == 0, (report.responses[:5], report.logs[:5], report.upstream[:5])


@dataclass
class Served:
    """A server run from a thread with a loop of the test's own: the loop is reachable while
    it serves, and what was still pending once the server had stopped is kept."""

    url: str
    loop: asyncio.AbstractEventLoop
    stop: Callable[[], None]
    #: tasks still pending in the server loop a second after the server returned (before
    #: the loop is torn down: they are cancelled then, so nothing outlives the test)
    leftover: list[str] = field(default_factory=list)

    def tasks(self) -> set[asyncio.Task[Any]]:
        """The server loop's tasks now, but for the one asking."""
        async def others() -> set[asyncio.Task[Any]]:
            return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[misc]

        return asyncio.run_coroutine_threadsafe(others(), self.loop).result(10)


def _drain(loop: asyncio.AbstractEventLoop, served: list[Served],
           transports: Callable[[], Iterable[Any]] = tuple) -> None:
    """Record the tasks still pending a second after the server returned, cancel them, close
    the loop. The second lets the ``aclose()`` that asyncio itself schedules for a dropped
    async generator run, as it would in a loop that goes on (``asyncio.run``, ``run_app``).

    ``transports``: the server's connections left; each is aborted first. A connection whose
    client stopped reading stays ``closing`` for ever (``close()`` waits for its unsent
    data), and a closed loop would leave its socket to the garbage collector."""
    import time

    for transport in transports():
        if transport is not None:
            transport.abort()
    deadline = time.monotonic() + 1
    while asyncio.all_tasks(loop) and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.01))
    pending = asyncio.all_tasks(loop)
    if served:
        served[0].leftover.extend(repr(task.get_coro()) for task in pending)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


@contextmanager
def serve_uvicorn(app: Any, **config: Any) -> Iterator[Served]:
    """``app`` on uvicorn on 127.0.0.1, in a thread with its own loop. ``stop()`` is uvicorn's
    graceful shutdown (``should_exit``, then ``timeout_graceful_shutdown``); called on the
    way out too, pass or fail, and the thread joined."""
    import threading

    import uvicorn

    from tests.helpers import free_port, wait_until

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_config=None, loop="asyncio", **config))
    loop = asyncio.new_event_loop()
    served: list[Served] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        finally:
            _drain(loop, served, lambda: [getattr(c, "transport", None)
                                          for c in server.server_state.connections])

    thread = threading.Thread(target=run, name="uvicorn-streams", daemon=True)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"

    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=10)
        assert server.started, "uvicorn did not start"
        served.append(Served(f"http://127.0.0.1:{server.config.port}", loop, stop))
        yield served[0]
    finally:
        stop()


@contextmanager
def serve_aiohttp(app: Any, shutdown_timeout: float = 1.0) -> Iterator[Served]:
    """``app`` on aiohttp's own server (AppRunner, TCPSite) in a thread with its own loop.
    ``stop()`` is ``runner.cleanup()``: aiohttp's graceful shutdown, handlers still running
    after ``shutdown_timeout`` cancelled; called on the way out too, pass or fail."""
    import threading

    from aiohttp import web

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    address: list[str] = []
    served: list[Served] = []
    ready = threading.Event()
    #: the connections' transports as shutdown begins (aiohttp forgets them as it goes)
    handlers: list[Any] = []

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
        try:
            loop.run_forever()
        finally:
            _drain(loop, served, lambda: handlers)

    thread = threading.Thread(target=run, name="aiohttp-streams", daemon=True)
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            async def cleanup() -> None:
                if runner.server is not None:
                    handlers.extend(h.transport for h in runner.server.connections)
                await runner.cleanup()

            try:
                asyncio.run_coroutine_threadsafe(cleanup(), loop).result(30)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the aiohttp server did not stop"

    thread.start()
    ready.wait(10)
    try:
        assert address, "the aiohttp server did not start"
        served.append(Served(address[0], loop, stop))
        yield served[0]
    finally:
        stop()
