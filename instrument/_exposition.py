"""The three metrics routes (``/metrics``, ``/metrics/health``, ``/metrics/summary``).

One function, ``respond``, produces them; the WSGI app, the ASGI app, the
standalone ``start_http_server`` and every adapter serve its output.
"""

from __future__ import annotations

import errno
import json
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, NamedTuple
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder

from instrument import _metrics
from instrument._summary import summarize_registry

JSON = "application/json"


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes


def _sources(registry: CollectorRegistry | None) -> tuple[CollectorRegistry, str]:
    """The registry to expose (all workers' in multiprocess mode) and its metric namespace."""
    m = _metrics.current() if registry is None else _metrics.metrics_for(registry)
    if m.multiprocess:
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        merged.register(m.uptime_collector)
        return merged, m.namespace
    return m.registry, m.namespace


def metrics_summary(registry: CollectorRegistry | None = None) -> dict[str, Any]:
    """The ``/metrics/summary`` document: per route, provider, span, cache and SSE endpoint."""
    reg, namespace = _sources(registry)
    return summarize_registry(reg, namespace)


def respond(route: str, accept: str | None = None, registry: CollectorRegistry | None = None,
            query: str = "") -> Response:
    """Serve ``route`` ("", "/health" or "/summary", relative to the metrics path)."""
    route = route.rstrip("/")
    try:
        reg, namespace = _sources(registry)
        if route == "/health":
            series = sum(len(family.samples) for family in reg.collect())
            return _json(200, {"status": "ok",
                               "uptime_seconds": round(time.time() - _metrics.PROCESS_START, 3),
                               "series": series})
        if route == "/summary":
            return _json(200, summarize_registry(reg, namespace))
        encoder, content_type = choose_encoder(accept or "")
        names = parse_qs(query).get("name[]") if query else None
        if names:
            reg = reg.restricted_registry(names)  # type: ignore[assignment]
        return Response(200, content_type, encoder(reg))
    except Exception as exc:
        _metrics.report_internal_error("exposition", exc)
        return _json(503, {"status": "error", "error": type(exc).__name__})


def _json(status: int, doc: dict[str, Any]) -> Response:
    return Response(status, JSON, json.dumps(doc, sort_keys=False).encode())


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


def split_metrics_path(path: str, metrics_path: str) -> str | None:
    """The sub-route of ``path`` under ``metrics_path``, or None if it is not a metrics route."""
    base = metrics_path.rstrip("/")
    if path == base or path == base + "/":
        return ""
    if path in (base + "/health", base + "/summary"):
        return path[len(base):]
    return None


def make_wsgi_app(registry: CollectorRegistry | None = None,
                  metrics_path: str = "/metrics") -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the three routes under ``metrics_path`` (any other path: /metrics)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        sub = split_metrics_path(environ.get("PATH_INFO", ""), metrics_path) or ""
        resp = respond(sub, environ.get("HTTP_ACCEPT"), registry, environ.get("QUERY_STRING", ""))
        start_response(f"{resp.status} {_REASONS.get(resp.status, '')}",
                       [("Content-Type", resp.content_type),
                        ("Content-Length", str(len(resp.body)))])
        return [resp.body]

    return app


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_asgi_app(registry: CollectorRegistry | None = None,
                  metrics_path: str = "/metrics") -> Callable[[Scope, Receive, Send],
                                                              Awaitable[None]]:
    """An ASGI app serving the three routes under ``metrics_path``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        accept = None
        for key, value in scope.get("headers", ()):
            if key == b"accept":
                accept = value.decode("latin-1")
        sub = split_metrics_path(scope.get("path", ""), metrics_path) or ""
        resp = respond(sub, accept, registry, scope.get("query_string", b"").decode("latin-1"))
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": [(b"content-type", resp.content_type.encode()),
                                (b"content-length", str(len(resp.body)).encode())]})
        await send({"type": "http.response.body", "body": resp.body})

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr."""


class MetricsServer(NamedTuple):
    """What ``start_http_server`` returns: unpacks as ``(server, thread)``, as prometheus-client."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        address = self.server.server_address[0]
        host = address.decode() if isinstance(address, bytes) else str(address)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_http_server(port: int, addr: str = "0.0.0.0",
                      registry: CollectorRegistry | None = None,
                      certfile: str | None = None, keyfile: str | None = None,
                      client_cafile: str | None = None, client_capath: str | None = None,
                      protocol: int = ssl.PROTOCOL_TLS_SERVER,
                      client_auth_required: bool = False,
                      tls_min_version: ssl.TLSVersion | None = None,
                      tls_max_version: ssl.TLSVersion | None = None) -> MetricsServer:
    """Serve ``/metrics``, ``/metrics/health`` and ``/metrics/summary`` from a daemon thread.

    A drop-in for ``prometheus_client.start_http_server`` (same parameters,
    TLS included). ``port=0`` picks a free port; read it from ``.port``.
    """
    import socket

    class Server(ThreadingWSGIServer):
        pass

    infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    Server.address_family = infos[0][0]
    try:
        httpd = make_server(addr, port, make_wsgi_app(registry), Server,
                            handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise OSError(exc.errno, f"cannot serve metrics on {addr}:{port}: the address is "
                      "already in use (another server holds the port): pass another port, "
                      "or port=0 to pick a free one") from exc
    if certfile and keyfile:
        context = ssl.SSLContext(protocol)
        if tls_min_version is not None:
            context.minimum_version = tls_min_version
        if tls_max_version is not None:
            context.maximum_version = tls_max_version
        if client_cafile or client_capath:
            context.load_verify_locations(cafile=client_cafile, capath=client_capath)
        context.verify_mode = ssl.CERT_REQUIRED if client_auth_required else ssl.CERT_NONE
        context.load_cert_chain(certfile=certfile, keyfile=keyfile)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, name="instrument-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
