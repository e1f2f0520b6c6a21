"""The behaviour every server adapter promises, checked under each framework's real server.

Each framework has ``tests/adapters/apps/<framework>_app.py`` exporting:

- ``serve(**instrument_kwargs)``: a context manager that builds the standard app,
  calls ``instrument_app(app, **instrument_kwargs)``, serves it with the
  framework's real server on 127.0.0.1 from a background thread, yields the
  base URL and always stops the server on exit;
- ``ITEM_ROUTE``: the template label expected for ``/items/<id>`` in the
  framework's own syntax (``/items/{item_id}``, ``/items/<item_id>``);
- ``BACKGROUND_TRACE_IDS``: the list the ``/background`` work appends to.

The standard routes:

- ``GET /items/{item_id}``: JSON ``{"item_id": id, "trace_id": get_trace_id()}``
- ``POST /only-post``: 200 (so ``GET`` is a 405)
- ``GET /boom``: raises ``RuntimeError("boom")``, unhandled (a 500)
- ``GET /slow-body``: text/plain streamed as ``chunk 0\\n``, ``chunk 1\\n``, ``chunk 2\\n``,
  0.2 s apart, headers first: the body ends >= 0.4 s after the headers
- ``GET /sse``: text/event-stream, ``data: n\\n\\n`` for n in 0..4, 0.02 s apart,
  from a plain generator (no ``@track_sse``)
- ``GET /sse-long``: the same, up to 200 events 0.05 s apart (to abandon half-way)
- ``GET /background``: ``ok`` at once, plus the framework's own background work
  (Starlette BackgroundTasks, Flask ``call_on_close``, an aiohttp task) that
  sleeps 0.5 s, then appends ``get_trace_id()`` to ``BACKGROUND_TRACE_IDS``
- ``GET /trace``: text body ``get_trace_id()``

Contract decisions pinned here: the metrics routes are not counted as requests;
an SSE stream the client abandons keeps the status it was sent with (200) and
closes with outcome ``client_disconnect``; a plain response the client
abandons is a 499 (see test_starlette.py).
"""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from tests.conftest import LogCapture
from tests.helpers import Scrape, scrape, wait_until

# framework -> (app module, name of its serve function)
FRAMEWORKS = {
    "starlette": ("tests.adapters.apps.starlette_app", "serve"),
    "fastapi": ("tests.adapters.apps.starlette_app", "serve_fastapi"),
    "flask": ("tests.adapters.apps.flask_app", "serve"),
    "aiohttp": ("tests.adapters.apps.aiohttp_app", "serve"),
}

W3C_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{W3C_ID}-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


class Served:
    """A running standard app: its URL, its module, and its metrics as Prometheus sees them."""

    def __init__(self, url: str, module: ModuleType,
                 serve: Callable[..., AbstractContextManager[str]]) -> None:
        self.url = url
        self.module = module
        self.serve = serve
        self.item_route: str = module.ITEM_ROUTE

    def scrape(self) -> Scrape:
        return scrape(f"{self.url}/metrics")

    def metric(self, name: str, **labels: str) -> float | None:
        return self.scrape().value(name, **labels)

    def eventually(self, name: str, expected: float, **labels: str) -> None:
        """Wait until the sample has the value (the request may finish just after the client)."""
        wait_until(lambda: self.metric(name, **labels) == expected)


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    """One server per framework for the module; every test still gets a fresh registry."""
    module_name, serve_name = FRAMEWORKS[request.param]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # that adapter or its test app is not written yet
        pytest.skip(f"no {request.param} test app ({module_name}): {exc}")
    serve = getattr(module, serve_name)
    with serve() as url:
        yield Served(url, module, serve)


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    # No keep-alive: some servers close the connection after an unhandled exception.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=served.url, timeout=10, limits=limits) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- trace in and out ---------------------------------------------------------------

def test_given_trace_id_is_echoed_and_current_in_the_handler(client: httpx.Client) -> None:
    r = client.get("/items/42", headers={"X-Trace-ID": "req-42.a:b"})
    assert r.status_code == 200
    assert r.headers["x-trace-id"] == "req-42.a:b"
    assert r.json() == {"item_id": "42", "trace_id": "req-42.a:b"}
    assert "traceparent" not in r.headers  # not W3C-shaped


def test_w3c_shaped_trace_id_also_gets_a_traceparent(client: httpx.Client) -> None:
    r = client.get("/trace", headers={"X-Trace-ID": W3C_ID})
    assert r.text == r.headers["x-trace-id"] == W3C_ID
    assert r.headers["traceparent"].split("-")[1] == W3C_ID


def test_traceparent_alone_gives_the_trace_id(client: httpx.Client) -> None:
    r = client.get("/trace", headers={"traceparent": TRACEPARENT})
    assert r.text == r.headers["x-trace-id"] == W3C_ID
    version, trace_id, span_id, _flags = r.headers["traceparent"].split("-")
    assert (version, trace_id) == ("00", W3C_ID)
    assert re.fullmatch(r"[0-9a-f]{16}", span_id)


def test_missing_trace_id_gets_a_new_w3c_one(client: httpx.Client) -> None:
    first, second = client.get("/trace"), client.get("/trace")
    for r in (first, second):
        assert HEX32.fullmatch(r.headers["x-trace-id"])
        assert r.text == r.headers["x-trace-id"]
        assert r.headers["traceparent"].split("-")[1] == r.text
    assert first.text != second.text


@pytest.mark.parametrize("bad", ["bad id", "x" * 200], ids=["space", "too-long"])
def test_malformed_trace_id_is_replaced_with_a_warning(client: httpx.Client, logs: LogCapture,
                                                       bad: str) -> None:
    r = client.get("/trace", headers={"X-Trace-ID": bad})
    assert r.status_code == 200
    replacement = r.headers["x-trace-id"]
    assert HEX32.fullmatch(replacement) and r.text == replacement
    warnings = [w for w in logs.events("invalid_trace_id") if w["trace_id"] == replacement]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING"


@pytest.mark.parametrize(("method", "path", "status"),
                         [("GET", "/nope", 404), ("GET", "/only-post", 405),
                          ("GET", "/boom", 500), ("POST", "/only-post", 200)])
def test_every_response_carries_the_trace_id(client: httpx.Client, method: str, path: str,
                                             status: int) -> None:
    r = client.request(method, path, headers={"X-Trace-ID": "err-1"})
    assert r.status_code == status
    assert r.headers["x-trace-id"] == "err-1"


# -- metrics ----------------------------------------------------------------------------

def test_route_label_is_the_template_and_unmatched_paths_share_one(served: Served,
                                                                    client: httpx.Client) -> None:
    client.get("/items/1")
    client.get("/items/2")
    assert client.get("/nope").status_code == 404
    served.eventually("http_requests_total", 2.0, method="GET", route=served.item_route,
                      status="200")
    served.eventually("http_requests_total", 1.0, route="__unmatched__", status="404")
    page = served.scrape()
    routes = {labels["route"] for labels in page.labels_of("http_requests_total")}
    assert routes == {served.item_route, "__unmatched__"}  # no raw path, no metrics route


def test_unhandled_exception_is_a_counted_500_logged_once(served: Served, client: httpx.Client,
                                                         logs: LogCapture) -> None:
    trace = unique("boom")
    assert client.get("/boom", headers={"X-Trace-ID": trace}).status_code == 500
    served.eventually("http_errors_total", 1.0, method="GET", route="/boom", status="500")
    assert served.metric("http_requests_total", route="/boom", status="500") == 1
    wait_until(lambda: [r for r in logs.events("unhandled_exception") if r["trace_id"] == trace])
    logged = [r for r in logs.events("unhandled_exception") if r["trace_id"] == trace]
    assert len(logged) == 1
    assert logged[0]["level"] == "ERROR"
    assert logged[0]["exception"]["type"] == "RuntimeError"
    assert "Traceback" in logged[0]["exception"]["traceback"]
    assert "boom" in logged[0]["exception"]["traceback"]


def test_sse_read_to_the_end(served: Served, client: httpx.Client) -> None:
    with client.stream("GET", "/sse") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-trace-id"]
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events == [f"data: {i}" for i in range(5)]
    served.eventually("sse_streams_closed_total", 1.0, endpoint="/sse", outcome="completed")
    page = served.scrape()
    assert page.value("http_requests_total", method="GET", route="/sse", status="200") == 1
    assert page.value("http_request_duration_seconds_count", route="/sse") is None
    assert page.value("sse_connections_total", endpoint="/sse") == 1
    assert page.value("sse_active_connections", endpoint="/sse") == 0
    assert page.value("sse_events_total", endpoint="/sse") == 5


def test_sse_abandoned_half_way(served: Served, client: httpx.Client) -> None:
    with client.stream("GET", "/sse-long") as r:
        lines = r.iter_lines()  # kept: closing the iterator would close the response
        events = [line for line in (next(lines) for _ in range(6)) if line.startswith("data:")]
        assert events == ["data: 0", "data: 1", "data: 2"]
        page = served.scrape()  # while the stream is open
        assert page.value("sse_active_connections", endpoint="/sse-long") == 1
        assert page.value("http_requests_in_progress", route="/sse-long") == 1
    served.eventually("sse_streams_closed_total", 1.0, endpoint="/sse-long",
                      outcome="client_disconnect")
    page = served.scrape()
    assert page.value("sse_active_connections", endpoint="/sse-long") == 0
    assert page.value("http_requests_in_progress", route="/sse-long") == 0
    # the stream had started: it keeps its status (a 499 is for responses never delivered)
    assert page.value("http_requests_total", route="/sse-long", status="200") == 1
    assert page.value("http_requests_total", route="/sse-long", status="499") is None
    assert page.value("http_errors_total", route="/sse-long") is None


def test_duration_runs_to_the_end_of_a_slow_body(served: Served, client: httpx.Client) -> None:
    r = client.get("/slow-body")
    assert r.text == "chunk 0\nchunk 1\nchunk 2\n"
    served.eventually("http_request_duration_seconds_count", 1.0, route="/slow-body")
    # a lower bound set by the app's own sleeps, not a claim about our speed
    total = served.metric("http_request_duration_seconds_sum", route="/slow-body")
    assert total is not None and total >= 0.39


def test_background_work_is_not_timed_but_keeps_the_trace(served: Served,
                                                          client: httpx.Client) -> None:
    trace = unique("bg")
    r = client.get("/background", headers={"X-Trace-ID": trace})
    assert r.text == "ok"
    wait_until(lambda: trace in served.module.BACKGROUND_TRACE_IDS, timeout=5)
    assert served.metric("http_request_duration_seconds_count", route="/background") == 1
    total = served.metric("http_request_duration_seconds_sum", route="/background")
    assert total is not None and total < 0.5


def test_duration_exemplar_carries_the_trace_id(served: Served, client: httpx.Client) -> None:
    client.get("/items/9", headers={"X-Trace-ID": W3C_ID})
    served.eventually("http_request_duration_seconds_count", 1.0, route=served.item_route)
    text = client.get("/metrics",
                      headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    buckets = [line for line in text.splitlines()
               if line.startswith("http_request_duration_seconds_bucket")]
    assert any(f'trace_id="{W3C_ID}"' in line for line in buckets)


def test_metrics_routes_are_served_and_not_counted(served: Served, client: httpx.Client) -> None:
    client.get("/items/1")
    served.eventually("http_requests_total", 1.0, route=served.item_route)
    text = client.get("/metrics")
    assert text.status_code == 200
    page = Scrape(text.text)  # prometheus_client.parser
    assert page.value("http_requests_total", route=served.item_route) is not None
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert list(parse_openmetrics(om.text))  # type: ignore[no-untyped-call]
    health = client.get("/metrics/health")
    assert health.headers["content-type"].startswith("application/json")
    assert health.json()["status"] == "ok"
    summary = client.get("/metrics/summary")
    assert isinstance(summary.json(), dict)
    routes = {labels["route"] for labels in served.scrape().labels_of("http_requests_total")}
    assert routes == {served.item_route}


def test_in_progress_is_back_to_zero(served: Served, client: httpx.Client) -> None:
    for path in ("/items/1", "/nope", "/boom", "/sse", "/slow-body", "/trace"):
        client.get(path)
    served.eventually("http_requests_total", 6.0)

    def all_zero() -> bool:
        samples = [s for s in served.scrape().samples if s.name == "http_requests_in_progress"]
        return len(samples) >= 5 and all(s.value == 0 for s in samples)

    wait_until(all_zero)


# -- access log -----------------------------------------------------------------------

def test_access_log_line_per_request(served: Served, client: httpx.Client,
                                     logs: LogCapture) -> None:
    trace = unique("log")
    r = client.get("/items/7", headers={"X-Trace-ID": trace})

    def line() -> list[dict[str, Any]]:
        return [x for x in logs.events("request") if x["trace_id"] == trace]

    [record] = wait_until(line)
    assert record["level"] == "INFO"
    assert record["method"] == "GET"
    assert record["route"] == served.item_route
    assert record["path"] == "/items/7"
    assert record["status"] == 200
    assert isinstance(record["latency_ms"], (int, float)) and record["latency_ms"] >= 0
    assert record["bytes"] == len(r.content)
    assert record["client"].startswith("127.0.0.1")
    assert logs.records  # every line of the capture parsed as JSON


def test_access_log_off(served: Served, logs: LogCapture) -> None:
    with served.serve(access_log=False) as url, httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/items/3").status_code == 200
        assert c.get("/boom").status_code == 500
        wait_until(lambda: scrape(f"{url}/metrics").value("http_requests_total") == 2)
    wait_until(lambda: logs.events("unhandled_exception"))  # exceptions are still logged
    assert len(logs.events("unhandled_exception")) == 1
    assert logs.events("request") == []


# -- exclusions and the untimed path ----------------------------------------------------

def test_excluded_paths_are_unmeasured_but_keep_their_trace(served: Served,
                                                            logs: LogCapture) -> None:
    """One rule for every adapter: an exact path, or a prefix ending in ``*``. An excluded
    request counts nothing and logs no access line, but its trace goes in and out."""
    with served.serve(exclude_paths=["/trace", "/items/*"]) as url, \
            httpx.Client(base_url=url, timeout=10) as c:
        given = c.get("/trace", headers={"X-Trace-ID": "excluded-1"})
        assert (given.text, given.headers["x-trace-id"]) == ("excluded-1", "excluded-1")
        w3c = c.get("/trace", headers={"traceparent": TRACEPARENT})
        assert w3c.text == w3c.headers["x-trace-id"] == W3C_ID
        assert w3c.headers["traceparent"].split("-")[1] == W3C_ID
        fresh = c.get("/trace")
        assert HEX32.fullmatch(fresh.headers["x-trace-id"]) and fresh.text == \
            fresh.headers["x-trace-id"]
        prefixed = c.get("/items/5", headers={"X-Trace-ID": "excluded-2"})
        assert prefixed.json() == {"item_id": "5", "trace_id": "excluded-2"}
        assert prefixed.headers["x-trace-id"] == "excluded-2"
        measured = c.get("/nope", headers={"X-Trace-ID": "measured-1"})  # a 404
        assert measured.headers["x-trace-id"] == "measured-1"
        wait_until(lambda: scrape(f"{url}/metrics").value("http_requests_total") == 1)
        page = scrape(f"{url}/metrics")
        assert {labels["route"] for labels in page.labels_of("http_requests_total")} == {
            "__unmatched__"}
        assert page.value("trace_requests_total") == 1  # the excluded ones started none
    lines = wait_until(lambda: logs.events("request"))
    assert [line["trace_id"] for line in lines] == ["measured-1"]


def test_metrics_routes_carry_the_trace_and_can_be_switched_off(served: Served) -> None:
    with served.serve(metrics_path="/internal/prom") as url, \
            httpx.Client(base_url=url, timeout=10) as c:
        for path in ("/internal/prom", "/internal/prom/health", "/internal/prom/summary"):
            r = c.get(path, headers={"X-Trace-ID": "scraper-1"})
            assert (r.status_code, r.headers["x-trace-id"]) == (200, "scraper-1")
        assert c.get("/metrics").status_code == 404  # the app's own: no such route
        wait_until(lambda: scrape(f"{url}/internal/prom").value(
            "http_requests_total", route="__unmatched__") == 1)
        assert scrape(f"{url}/internal/prom").value("http_requests_total") == 1


@pytest.mark.parametrize(("options", "error", "says"), [
    ({"exclude_paths": "/healthz"}, TypeError, "not one string"),
    ({"exclude_paths": ["healthz"]}, ValueError, "starting with '/'"),
    ({"metrics_path": "metrics"}, ValueError, "metrics_path"),
])
def test_bad_options_are_refused_when_instrumenting(served: Served, options: dict[str, Any],
                                                   error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says), served.serve(**options):
        pass  # pragma: no cover - instrument_app raises before the server starts
