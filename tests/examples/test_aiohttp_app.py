"""examples/aiohttp_app.py: the trace goes in, out to the upstream and back; both sides measured."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.examples import PYTHON, running
from tests.helpers import free_port, scrape, wait_until

pytestmark = pytest.mark.slow

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_trace_reaches_the_upstream_and_metrics_cover_server_client_and_provider(
        tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([PYTHON, "examples/aiohttp_app.py"], tmp_path, {"PORT": str(port)}) as example:
        example.wait_http(base + "/metrics/health")
        response = httpx.get(base + "/answer", params={"q": "hello"},
                             headers={"X-Trace-ID": TRACE}, timeout=10)
        assert response.status_code == 200
        assert response.headers["X-Trace-ID"] == TRACE
        body = response.json()
        assert body["trace_id"] == body["upstream_received_trace_id"] == TRACE
        assert body["answer"] == "You asked about hello."

        page = wait_until(lambda: (p := scrape(base + "/metrics")).value(
            "http_requests_total", route="/answer") and p)
        assert page.value("http_requests_total", method="GET", route="/answer", status="200") == 1
        assert page.value("http_requests_total", route="/upstream/complete", status="200") == 1
        assert page.value("http_client_requests_total", host=f"127.0.0.1:{port}",
                          method="POST", status="200") == 1
        assert page.value("provider_requests_total", provider="local", model="tiny-1",
                          status="ok") == 1
        assert page.value("provider_tokens_total", provider="local", type="input") == 12
        assert page.value("token_cost_usd_total", provider="local") > 0

        logs = wait_until(lambda: [r for r in example.json_logs()
                                   if r.get("event") == "request" and r.get("route") == "/answer"]
                          and example.json_logs())
        traced = {(r.get("event"), r.get("route")) for r in logs if r["trace_id"] == TRACE}
        assert {("request", "/answer"), ("request", "/upstream/complete"),
                ("provider_call", None)} <= traced
