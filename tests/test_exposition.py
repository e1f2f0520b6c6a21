"""Tests for the metrics routes over a real socket (plain and TLS), and as WSGI and ASGI apps."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.registry import Collector

import instrument
from instrument import MetricsServer, make_asgi_app, make_wsgi_app, metrics_summary, trace_span
from tests.helpers import scrape, value

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


class Exploding(Collector):
    def collect(self) -> Iterable[Metric]:
        raise RuntimeError("collector broke")


def get(url: str, accept: str | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read()


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    srv = instrument.start_http_server(0, addr="127.0.0.1", registry=registry)
    yield srv
    srv.shutdown()


# --- the standalone server ----------------------------------------------------------


@pytest.mark.slow
def test_metrics_route_serves_prometheus_text(server: MetricsServer) -> None:
    with trace_span("work"):
        pass
    page = scrape(server.url + "/metrics")
    assert page.value("span_duration_seconds_count", span="work") == 1
    assert page.value("trace_requests_total") == 1
    assert page.value("system_uptime_seconds") is not None
    status, content_type, _ = get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")


@pytest.mark.slow
def test_openmetrics_is_served_on_request_with_trace_id_exemplars(
        server: MetricsServer) -> None:
    with trace_span("retrieve") as span:
        pass
    status, content_type, body = get(server.url + "/metrics", accept=OPENMETRICS)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert f'# {{trace_id="{span.trace_id}"}}' in text
    exemplars = [s.exemplar for f in openmetrics_families(text) if f.name ==
                 "span_duration_seconds" for s in f.samples if s.exemplar is not None]
    assert [e.labels for e in exemplars] == [{"trace_id": span.trace_id}]


@pytest.mark.slow
def test_health_reports_status_uptime_and_series(server: MetricsServer) -> None:
    status, content_type, body = get(server.url + "/metrics/health")
    assert status == 200
    assert content_type == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "ok"
    assert isinstance(doc["uptime_seconds"], (int, float)) and doc["uptime_seconds"] >= 0
    assert doc["series"] > 0


@pytest.mark.slow
def test_health_is_503_when_collecting_fails(server: MetricsServer,
                                             registry: CollectorRegistry) -> None:
    bad = Exploding()
    registry.register(bad)
    status, content_type, body = get(server.url + "/metrics/health")
    assert status == 503
    assert content_type == "application/json"
    assert json.loads(body) == {"status": "error", "error": "RuntimeError"}
    assert get(server.url + "/metrics")[0] == 503
    registry.unregister(bad)
    assert value(registry, "instrument_internal_errors_total", where="exposition") == 2
    assert get(server.url + "/metrics/health")[0] == 200  # and it recovers


@pytest.mark.slow
def test_summary_route_serves_the_registry_digest(server: MetricsServer) -> None:
    with trace_span("demo"):
        pass
    status, content_type, body = get(server.url + "/metrics/summary")
    assert status == 200
    assert content_type == "application/json"
    doc = json.loads(body)
    assert [s["span"] for s in doc["spans"]] == ["demo"]
    assert doc["spans"][0]["count"] == 1
    assert doc["traces"] == 1
    assert doc == {**metrics_summary(), "uptime_seconds": doc["uptime_seconds"]}


@pytest.mark.slow
def test_a_name_filter_restricts_the_exposition(server: MetricsServer) -> None:
    page = scrape(server.url + "/metrics?name[]=trace_requests_total")
    assert {s.name for s in page.samples} == {"trace_requests_total"}


@pytest.mark.slow
def test_server_unpacks_like_prometheus_client_and_shutdown_releases_the_port(
        registry: CollectorRegistry) -> None:
    result = instrument.start_http_server(0, addr="127.0.0.1", registry=registry)
    server, thread = result
    assert isinstance(thread, threading.Thread) and thread.is_alive() and thread.daemon
    port = result.port
    assert server.server_port == port
    assert get(result.url + "/metrics/health")[0] == 200
    result.shutdown()
    assert not thread.is_alive()
    with socket.socket() as s:
        # SO_REUSEADDR, as every server sets, tolerates the closed connections' TIME_WAIT
        # but not a socket still listening: bind fails with EADDRINUSE if it was not released.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    again = instrument.start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        assert get(again.url + "/metrics/health")[0] == 200
    finally:
        again.shutdown()


@pytest.mark.slow
def test_the_default_registry_is_served_when_none_is_given(registry: CollectorRegistry) -> None:
    srv = instrument.start_http_server(0, addr="127.0.0.1")  # the configured registry
    try:
        with trace_span("default"):
            pass
        page = scrape(srv.url + "/metrics")
        assert page.value("span_duration_seconds_count", span="default") == 1
    finally:
        srv.shutdown()


@pytest.mark.slow
def test_tls_serves_the_same_routes(tmp_path: Path, registry: CollectorRegistry) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    srv = instrument.start_http_server(0, addr="127.0.0.1", registry=registry,
                                       certfile=str(cert), keyfile=str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        base = f"https://127.0.0.1:{srv.port}"
        with trace_span("secure"):
            pass
        status, _, body = get(base + "/metrics", context=context)
        assert status == 200
        assert b'span_duration_seconds_count{span="secure"} 1.0' in body
        status, _, body = get(base + "/metrics/health", context=context)
        assert (status, json.loads(body)["status"]) == (200, "ok")
        status, _, body = get(base + "/metrics/summary", context=context)
        assert [s["span"] for s in json.loads(body)["spans"]] == ["secure"]
        with pytest.raises(urllib.error.URLError):  # an untrusted client refuses it
            get(base + "/metrics/health", context=ssl.create_default_context())
    finally:
        srv.shutdown()


# --- WSGI ---------------------------------------------------------------------------------


def call_wsgi(app: Any, path: str, method: str = "GET", accept: str | None = None,
              query: str = "") -> tuple[str, dict[str, str], bytes]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "SERVER_NAME": "test", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    if accept:
        environ["HTTP_ACCEPT"] = accept
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(app(environ, lambda status, headers: started.append((status, headers))))
    status, headers = started[0]
    return status, dict(headers), body


def test_wsgi_app_serves_the_three_routes(registry: CollectorRegistry) -> None:
    app = make_wsgi_app(registry)
    with trace_span("wsgi") as span:
        pass
    status, headers, body = call_wsgi(app, "/metrics")
    assert status == "200 OK"
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Content-Length"] == str(len(body))
    assert b'span_duration_seconds_count{span="wsgi"} 1.0' in body

    _, headers, body = call_wsgi(app, "/metrics", accept=OPENMETRICS)
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert f'trace_id="{span.trace_id}"'.encode() in body

    status, headers, body = call_wsgi(app, "/metrics/health")
    assert status == "200 OK" and headers["Content-Type"] == "application/json"
    assert json.loads(body)["status"] == "ok"

    status, _, body = call_wsgi(app, "/metrics/summary")
    assert [s["span"] for s in json.loads(body)["spans"]] == ["wsgi"]


def test_wsgi_app_honours_a_custom_path_and_refuses_writes(registry: CollectorRegistry) -> None:
    app = make_wsgi_app(registry, metrics_path="/internal/metrics/")
    status, _, body = call_wsgi(app, "/internal/metrics/health")
    assert status == "200 OK" and json.loads(body)["status"] == "ok"
    status, _, body = call_wsgi(app, "/internal/metrics/summary")
    assert "spans" in json.loads(body)
    status, headers, _ = call_wsgi(app, "/internal/metrics", method="POST")
    assert status.startswith("405") and headers["Allow"] == "GET, HEAD"


def test_wsgi_health_is_503_when_collecting_fails(registry: CollectorRegistry) -> None:
    registry.register(Exploding())
    status, _, body = call_wsgi(make_wsgi_app(registry), "/metrics/health")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["status"] == "error"


# --- ASGI ---------------------------------------------------------------------------------


async def call_asgi(app: Any, path: str, accept: str | None = None,
                    query: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "headers": [(b"accept", accept.encode())] if accept else []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


@pytest.mark.anyio
async def test_asgi_app_serves_the_three_routes(registry: CollectorRegistry) -> None:
    app = make_asgi_app(registry)
    with trace_span("asgi") as span:
        pass
    status, headers, body = await call_asgi(app, "/metrics")
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/plain")
    assert headers[b"content-length"] == str(len(body)).encode()
    assert b'span_duration_seconds_count{span="asgi"} 1.0' in body

    _, headers, body = await call_asgi(app, "/metrics", accept=OPENMETRICS)
    assert headers[b"content-type"].startswith(b"application/openmetrics-text")
    assert f'trace_id="{span.trace_id}"'.encode() in body

    status, headers, body = await call_asgi(app, "/metrics/health")
    assert (status, headers[b"content-type"]) == (200, b"application/json")
    assert json.loads(body)["series"] > 0

    status, _, body = await call_asgi(app, "/metrics/summary")
    assert [s["span"] for s in json.loads(body)["spans"]] == ["asgi"]

    _, _, body = await call_asgi(app, "/metrics", query=b"name[]=trace_requests_total")
    assert b"span_duration_seconds" not in body and b"trace_requests_total" in body


@pytest.mark.anyio
async def test_asgi_health_is_503_when_collecting_fails(registry: CollectorRegistry) -> None:
    registry.register(Exploding())
    status, _, body = await call_asgi(make_asgi_app(registry), "/metrics/health")
    assert status == 503
    assert json.loads(body)["status"] == "error"


@pytest.mark.anyio
async def test_asgi_app_ignores_lifespan_scopes(registry: CollectorRegistry) -> None:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    await make_asgi_app(registry)({"type": "lifespan"}, receive, send)
    assert sent == []
