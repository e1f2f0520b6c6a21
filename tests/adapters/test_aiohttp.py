"""The aiohttp server adapter, under aiohttp's own server on 127.0.0.1, driven by httpx."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from instrument import get_trace_id
from instrument.adapters.aiohttp import instrument_app
from tests.adapters.apps import aiohttp_app
from tests.adapters.apps.aiohttp_app import ITEM_ROUTE, create_app, serve, serving
from tests.conftest import LogCapture
from tests.helpers import scrape, wait_until

pytestmark = pytest.mark.slow

HEX32 = re.compile(r"[0-9a-f]{32}")
W3C_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{W3C_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def base() -> Iterator[str]:
    with serve() as url:
        yield url


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=10)


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(s.value for family in registry.collect() for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def requests_total(registry: CollectorRegistry, **labels: str) -> float:
    return total(registry, "http_requests_total", **labels)


def request_logs(logs: LogCapture, path: str) -> list[dict[str, Any]]:
    return [r for r in logs.events("request") if r["path"] == path]


# -- trace in and out -----------------------------------------------------------------------
def test_given_trace_id_is_current_in_the_handler_and_echoed(base: str, logs: LogCapture) -> None:
    response = get(f"{base}/items/7", **{"X-Trace-ID": "req-123"})
    assert response.json() == {"item_id": "7", "trace_id": "req-123"}
    assert response.headers["X-Trace-ID"] == "req-123"
    assert "traceparent" not in response.headers  # not W3C-shaped
    line = wait_until(lambda: request_logs(logs, "/items/7"))[0]
    assert line["trace_id"] == "req-123"
    assert line["route"] == ITEM_ROUTE and line["status"] == 200 and line["method"] == "GET"
    assert line["bytes"] == len(response.content) and line["client"] == "127.0.0.1"
    assert line["latency_ms"] >= 0


def test_traceparent_only_gives_its_trace_id(base: str) -> None:
    response = get(f"{base}/trace", traceparent=TRACEPARENT)
    assert response.text == W3C_ID
    assert response.headers["X-Trace-ID"] == W3C_ID
    assert response.headers["traceparent"].split("-")[1] == W3C_ID


def test_missing_trace_id_gets_a_fresh_w3c_one(base: str) -> None:
    first, second = get(f"{base}/trace"), get(f"{base}/trace")
    assert HEX32.fullmatch(first.text) and first.headers["X-Trace-ID"] == first.text
    assert first.headers["traceparent"].split("-")[1] == first.text
    assert first.text != second.text


def test_malformed_trace_id_is_replaced_and_warned_about(base: str, logs: LogCapture) -> None:
    response = get(f"{base}/trace", **{"X-Trace-ID": "not valid!" * 3})
    assert HEX32.fullmatch(response.text)
    assert response.headers["X-Trace-ID"] == response.text
    [warning] = logs.events("invalid_trace_id")
    assert warning["level"] == "WARNING" and warning["rejected"].startswith("not valid!")
    assert warning["trace_id"] == response.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/no-such-page", 404), ("GET", "/only-post", 405), ("GET", "/boom", 500)])
def test_error_responses_carry_the_trace_headers(base: str, method: str, path: str,
                                                 status: int) -> None:
    response = httpx.request(method, base + path, headers={"traceparent": TRACEPARENT})
    assert response.status_code == status
    assert response.headers["X-Trace-ID"] == W3C_ID
    assert response.headers["traceparent"].startswith(f"00-{W3C_ID}-")


def test_streamed_response_carries_the_trace_header(base: str) -> None:
    with httpx.stream("GET", f"{base}/slow-body", headers={"X-Trace-ID": "s-1"}) as response:
        assert response.headers["X-Trace-ID"] == "s-1"
        assert response.read() == b"chunk 0\nchunk 1\nchunk 2\n"


# -- metrics ---------------------------------------------------------------------------------
def test_route_label_is_the_template_or_unmatched(base: str, registry: CollectorRegistry) -> None:
    get(f"{base}/items/1")
    get(f"{base}/items/2")
    get(f"{base}/nothing/here")
    wait_until(lambda: requests_total(registry, route="__unmatched__", status="404") == 1)
    page = scrape(f"{base}/metrics")
    assert page.value("http_requests_total", method="GET", route=ITEM_ROUTE, status="200") == 2
    routes = {labels["route"] for labels in page.labels_of("http_requests_total")}
    assert routes == {ITEM_ROUTE, "__unmatched__"}  # never a raw path, never /metrics
    assert page.value("http_request_duration_seconds_count", route=ITEM_ROUTE) == 2


def test_unhandled_exception_is_a_500_error_logged_once(base: str, registry: CollectorRegistry,
                                                        logs: LogCapture) -> None:
    response = get(f"{base}/boom", **{"X-Trace-ID": "boom-1"})
    assert response.status_code == 500
    wait_until(lambda: request_logs(logs, "/boom"))
    assert total(registry, "http_errors_total", method="GET", route="/boom", status="500") == 1
    assert requests_total(registry, route="/boom", status="500") == 1
    errors = logs.events("unhandled_exception")
    assert len(errors) == 1
    assert errors[0]["trace_id"] == "boom-1" and errors[0]["route"] == "/boom"
    assert "RuntimeError: boom" in errors[0]["exception"]["traceback"]
    assert request_logs(logs, "/boom")[0]["status"] == 500
    # aiohttp's own error log (routed into the same sink) carries the trace ID too
    assert all(r["trace_id"] == "boom-1" for r in logs.records if r["logger"] == "aiohttp.server")


def test_stream_response_is_timed_to_the_end_of_its_body(base: str,
                                                          registry: CollectorRegistry) -> None:
    get(f"{base}/slow-body")
    labels = {"method": "GET", "route": "/slow-body"}
    wait_until(lambda: total(registry, "http_request_duration_seconds_count", **labels) == 1)
    assert total(registry, "http_request_duration_seconds_sum", **labels) >= 0.38  # 2 x 0.2 s


def test_background_task_sees_the_trace_but_is_not_timed(base: str,
                                                         registry: CollectorRegistry) -> None:
    aiohttp_app.BACKGROUND_TRACE_IDS.clear()
    get(f"{base}/background", **{"X-Trace-ID": "bg-1"})
    labels = {"method": "GET", "route": "/background"}
    wait_until(lambda: total(registry, "http_request_duration_seconds_count", **labels) == 1)
    assert total(registry, "http_request_duration_seconds_sum", **labels) < 0.4  # job: 0.5 s
    assert wait_until(lambda: aiohttp_app.BACKGROUND_TRACE_IDS) == ["bg-1"]


def test_sse_read_to_the_end_goes_to_the_sse_family(base: str,
                                                    registry: CollectorRegistry) -> None:
    body = get(f"{base}/sse").text
    assert body.count("data: ") == 5
    wait_until(lambda: total(registry, "sse_streams_closed_total", endpoint="/sse",
                             outcome="completed") == 1)
    assert total(registry, "sse_events_total", endpoint="/sse") == 5
    assert total(registry, "sse_active_connections", endpoint="/sse") == 0
    assert requests_total(registry, route="/sse", status="200") == 1
    assert total(registry, "http_request_duration_seconds_count", route="/sse",
                 method="GET") == 0


def test_sse_abandoned_half_way_is_a_client_disconnect(base: str,
                                                       registry: CollectorRegistry) -> None:
    with httpx.stream("GET", f"{base}/sse-long", timeout=10) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    assert total(registry, "sse_active_connections", endpoint="/sse-long") in (0, 1)
    wait_until(lambda: total(registry, "sse_streams_closed_total", endpoint="/sse-long",
                             outcome="client_disconnect") == 1)
    assert total(registry, "sse_active_connections", endpoint="/sse-long") == 0
    assert total(registry, "http_requests_in_progress", method="GET", route="/sse-long") == 0
    assert total(registry, "http_errors_total", method="GET", route="/sse-long",
                 status="500") == 0


def test_client_gone_before_a_plain_response_is_counted_as_499(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    instrument_app(app)
    with serving(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{url}/slow", timeout=0.1)
        wait_until(lambda: requests_total(registry, route="/slow", status="499") == 1)
    assert total(registry, "http_errors_total", route="/slow", method="GET", status="499") == 0
    assert not logs.events("unhandled_exception")


def test_nothing_stays_in_progress(base: str, registry: CollectorRegistry) -> None:
    for path in ("/items/1", "/boom", "/nope", "/only-post", "/sse", "/slow-body", "/trace"):
        get(base + path)
    page = wait_until(lambda: (p := scrape(f"{base}/metrics")).value(
        "http_requests_total") == 7 and p)
    assert all(s.value == 0 for s in page.samples if s.name == "http_requests_in_progress")


# -- metrics routes, options -------------------------------------------------------------------
def test_metrics_routes_are_served_and_not_counted(base: str, registry: CollectorRegistry) -> None:
    get(f"{base}/trace")
    wait_until(lambda: requests_total(registry) == 1)
    text = get(f"{base}/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    om = get(f"{base}/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert re.search(r'http_request_duration_seconds_bucket\{.*route="/trace".*# \{trace_id="'
                     r'[0-9a-f]{32}"\}', om.text)  # exemplars with the trace ID
    assert get(f"{base}/metrics/health").json()["status"] == "ok"
    summary = get(f"{base}/metrics/summary")
    assert summary.headers["content-type"] == "application/json"
    assert json.loads(summary.text)
    assert requests_total(registry) == 1  # the metrics routes are not requests of the app


def test_options_metrics_path_access_log_and_exclusions(registry: CollectorRegistry,
                                                        logs: LogCapture) -> None:
    with serve(metrics_path="/internal/prom", access_log=False,
               exclude_paths=("/trace", "/items/*")) as url:
        excluded = httpx.get(f"{url}/trace", headers={"X-Trace-ID": "excluded-1"})
        assert (excluded.text, excluded.headers["x-trace-id"]) == ("excluded-1", "excluded-1")
        get(f"{url}/items/3")
        get(f"{url}/sse")
        assert "http_requests_total" in get(f"{url}/internal/prom").text
        assert get(f"{url}/metrics").status_code == 404
        wait_until(lambda: requests_total(registry, route="/sse") == 1)
    assert requests_total(registry, route="/trace") == 0
    assert requests_total(registry, route=ITEM_ROUTE) == 0
    assert not logs.events("request")


def test_sub_app_routes_are_labelled_with_their_prefix(registry: CollectorRegistry) -> None:
    async def thing(request: web.Request) -> web.Response:
        return web.Response(text=get_trace_id() or "")

    sub = web.Application()
    sub.router.add_get("/things/{thing_id}", thing)
    app = web.Application()
    app.add_subapp("/api", sub)
    instrument_app(app)
    with serving(app) as url:
        assert get(f"{url}/api/things/9", **{"X-Trace-ID": "sub-1"}).text == "sub-1"
        wait_until(lambda: requests_total(registry, route="/api/things/{thing_id}") == 1)


def test_websocket_upgrades_pass_through_uncounted(registry: CollectorRegistry) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    app = create_app()
    app.router.add_get("/ws", ws_echo)
    instrument_app(app)

    async def talk(url: str) -> str:
        async with aiohttp.ClientSession() as client, client.ws_connect(f"{url}/ws") as ws:
            await ws.send_str("hi")
            return str(await ws.receive_str())

    with serving(app) as url:
        assert asyncio.run(talk(url)) == "hi"
        get(f"{url}/trace")
        wait_until(lambda: requests_total(registry, route="/trace") == 1)
    assert requests_total(registry, route="/ws") == 0


# -- set-up ------------------------------------------------------------------------------------
def test_instrument_app_twice_is_idempotent(registry: CollectorRegistry) -> None:
    app = create_app()
    assert instrument_app(app) is app
    instrument_app(app)
    assert len(app.middlewares) == 1 and len(app.on_response_prepare) == 1
    with serving(app) as url:
        get(f"{url}/trace")
        wait_until(lambda: requests_total(registry, route="/trace") == 1)
        time.sleep(0.05)
    assert requests_total(registry, route="/trace") == 1


def test_two_apps_in_one_process(registry: CollectorRegistry) -> None:
    with serve() as first, serve() as second:
        get(f"{first}/trace")
        get(f"{second}/trace")
        wait_until(lambda: requests_total(registry, route="/trace") == 2)


def test_frozen_app_is_refused_with_a_clear_error() -> None:
    app = create_app()
    app.freeze()
    with pytest.raises(RuntimeError, match="before the aiohttp application starts"):
        instrument_app(app)


def test_missing_extra_names_the_pip_command() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['aiohttp'] = None\n"
            "try:\n    import instrument.adapters.aiohttp\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'llm-instrument[aiohttp]'" in out
