"""httpx ``Client`` and ``AsyncClient`` with ``instrument_client``: trace headers out, metrics in.

    python examples/httpx_client.py

Starts a small local upstream (PORT, default a free port), calls it once with
each client inside a span, and prints the trace headers the upstream received
and the client metrics that were recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from prometheus_client import generate_latest

from instrument import configure_logging, trace_span
from instrument.adapters.httpx import instrument_client


class Echo(BaseHTTPRequestHandler):
    """Answers every GET with the trace headers it received."""

    def do_GET(self) -> None:
        body = json.dumps({name: self.headers.get(name)
                           for name in ("X-Trace-ID", "traceparent")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the output to what the example prints


def show(kind: str, trace_id: str, received: dict[str, str]) -> None:
    print(f"{kind:<5} span trace {trace_id}: upstream received "
          f"X-Trace-ID={received['X-Trace-ID']} traceparent={received['traceparent']}")


def call_sync(base_url: str) -> None:
    with instrument_client(httpx.Client(base_url=base_url)) as client, \
            trace_span("sync_call") as span:
        show("sync", span.trace_id, client.get("/echo").json())


async def call_async(base_url: str) -> None:
    async with instrument_client(httpx.AsyncClient(base_url=base_url)) as client:
        with trace_span("async_call") as span:
            show("async", span.trace_id, (await client.get("/echo")).json())


def main() -> None:
    configure_logging("INFO")  # JSON on stderr; spans log at DEBUG, so nothing here
    upstream = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "0"))), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{upstream.server_port}"
    try:
        call_sync(base_url)
        asyncio.run(call_async(base_url))
    finally:
        upstream.shutdown()
        upstream.server_close()
    print("client metrics:")
    for line in generate_latest().decode().splitlines():
        if line.startswith(("http_client_requests_total",
                            "http_client_request_duration_seconds_count")):
            print(" ", line)


if __name__ == "__main__":
    main()
