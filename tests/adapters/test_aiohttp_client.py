"""The aiohttp client adapter, against a local aiohttp upstream that records what it receives."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest

from instrument import get_span_id, get_trace_id, trace_span, use_trace_id
from instrument._propagation import parse_traceparent
from instrument.adapters.aiohttp import client_trace_config
from tests.adapters.apps.aiohttp_app import serving
from tests.helpers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp is asyncio-only: these tests do not run under trio."""
    return "asyncio"


class Upstream:
    def __init__(self, url: str, received: list[dict[str, str]]) -> None:
        self.url = url
        self.received = received
        self.host = url.removeprefix("http://")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Records every request's headers; ``/slow`` streams 3 chunks 0.2 s apart."""
    received: list[dict[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.Response(text="ok", status=int(request.query.get("status", "200")))

    async def slow(request: web.Request) -> web.StreamResponse:
        received.append(dict(request.headers))
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(3):
            if i:
                await asyncio.sleep(0.2)
            await response.write(f"chunk {i}\n".encode())
        return response

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    with serving(app) as url:
        yield Upstream(url, received)


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(s.value for family in registry.collect() for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(trace_configs=[client_trace_config()])


async def test_sends_the_current_trace_id_and_a_valid_traceparent(upstream: Upstream) -> None:
    async with session() as client:
        with trace_span("outbound"):
            async with client.get(f"{upstream.url}/echo") as response:
                assert await response.text() == "ok"
            trace_id, span_id = get_trace_id(), get_span_id()
    [headers] = upstream.received
    assert headers["X-Trace-ID"] == trace_id
    assert parse_traceparent(headers["traceparent"]) == (trace_id, span_id)


async def test_a_non_w3c_trace_id_is_sent_without_traceparent(upstream: Upstream) -> None:
    async with session() as client:
        with use_trace_id("gateway-42"):
            await (await client.get(f"{upstream.url}/echo")).read()
    [headers] = upstream.received
    assert headers["X-Trace-ID"] == "gateway-42"
    assert "traceparent" not in {k.lower() for k in headers}


async def test_outside_a_trace_no_headers_are_invented(upstream: Upstream,
                                                       registry: CollectorRegistry) -> None:
    async with session() as client:
        await (await client.get(f"{upstream.url}/echo")).read()
    assert "X-Trace-ID" not in upstream.received[0]
    assert total(registry, "http_client_requests_total", status="200") == 1


async def test_client_metrics_are_labelled_by_host_method_and_status(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    async with session() as client:
        with trace_span("calls"):
            for method, code in (("GET", 200), ("POST", 201), ("GET", 503)):
                async with client.request(method, f"{upstream.url}/echo?status={code}") as r:
                    await r.read()
            trace_id = get_trace_id()
    host = upstream.host  # 127.0.0.1:<port>: the port is kept when it is not the default
    assert re.fullmatch(r"127\.0\.0\.1:\d+", host)
    for method, status in (("GET", "200"), ("POST", "201"), ("GET", "503")):
        assert total(registry, "http_client_requests_total", host=host, method=method,
                     status=status) == 1
    assert total(registry, "http_client_request_duration_seconds_count", host=host,
                 method="GET") == 2
    exposition = generate_latest(registry).decode()  # type: ignore[no-untyped-call]
    assert f'http_client_request_duration_seconds_bucket{{host="{host}",le=' in exposition
    assert f'# {{trace_id="{trace_id}"}}' in exposition


async def test_duration_runs_to_the_end_of_a_slowly_streamed_body(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    labels = {"host": upstream.host, "method": "GET"}
    async with session() as client:
        async with client.get(f"{upstream.url}/slow") as response:
            assert response.status == 200
            # headers are in, the body is not: nothing recorded yet
            assert total(registry, "http_client_request_duration_seconds_count", **labels) == 0
            assert await response.read() == b"chunk 0\nchunk 1\nchunk 2\n"
        await asyncio.sleep(0)
    assert total(registry, "http_client_request_duration_seconds_count", **labels) == 1
    assert total(registry, "http_client_request_duration_seconds_sum", **labels) >= 0.38
    assert total(registry, "http_client_requests_total", status="200", **labels) == 1


async def test_a_response_released_unread_ends_the_duration(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    labels = {"host": upstream.host, "method": "GET"}
    async with session() as client:
        async with client.get(f"{upstream.url}/slow") as response:
            assert response.status == 200
        await asyncio.sleep(0)
        assert total(registry, "http_client_request_duration_seconds_count", **labels) == 1
        assert total(registry, "http_client_request_duration_seconds_sum", **labels) < 0.3


async def test_raise_for_status_is_counted_with_the_status(upstream: Upstream,
                                                          registry: CollectorRegistry) -> None:
    async with aiohttp.ClientSession(trace_configs=[client_trace_config()],
                                     raise_for_status=True) as client:
        with pytest.raises(aiohttp.ClientResponseError):
            await client.get(f"{upstream.url}/echo?status=404")
    assert total(registry, "http_client_requests_total", host=upstream.host, method="GET",
                 status="404") == 1


async def test_connection_refused_is_counted_with_the_exception_type(
        registry: CollectorRegistry) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with session() as client:
        with pytest.raises(aiohttp.ClientConnectionError) as caught:
            await client.get(f"http://{host}/")
    status = type(caught.value).__name__
    assert status.startswith("ClientConnector")
    assert total(registry, "http_client_requests_total", host=host, method="GET",
                 status=status) == 1
    assert total(registry, "http_client_request_duration_seconds_count", host=host) == 1


async def test_an_explicit_registry_is_used(upstream: Upstream,
                                            registry: CollectorRegistry) -> None:
    other = CollectorRegistry()
    async with aiohttp.ClientSession(trace_configs=[client_trace_config(registry=other)]) as c:
        await (await c.get(f"{upstream.url}/echo")).read()
    assert total(other, "http_client_requests_total", host=upstream.host, status="200") == 1
    assert total(registry, "http_client_requests_total") == 0
