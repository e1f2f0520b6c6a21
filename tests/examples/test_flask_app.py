"""examples/flask_app.py: a provider call and an SSE stream under Flask, traced and measured."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.examples import PYTHON, running
from tests.helpers import free_port, scrape, wait_until

pytestmark = pytest.mark.slow

TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_ask_and_stream_are_traced_and_measured(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([PYTHON, "examples/flask_app.py"], tmp_path, {"PORT": str(port)}) as example:
        example.wait_http(base + "/metrics/health")
        with httpx.Client(base_url=base, timeout=10) as client:
            ask = client.get("/ask", params={"q": "tracing"}, headers={"X-Trace-ID": TRACE})
            assert ask.status_code == 200
            assert ask.headers["X-Trace-ID"] == ask.json()["trace_id"] == TRACE
            assert "tracing" in ask.json()["answer"]

            stream = client.get("/stream", params={"q": "streams"})
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.text.startswith(": thinking\n\n")
            assert "data: streams; \n\n" in stream.text
            assert stream.text.endswith("event: done\ndata: {}\n\n")

        page = wait_until(lambda: (p := scrape(base + "/metrics")).value(
            "sse_streams_closed_total", endpoint="/stream") and p)
        assert page.value("sse_streams_closed_total", endpoint="/stream", outcome="completed") == 1
        assert page.value("sse_heartbeats_total", endpoint="/stream") == 1
        assert page.value("sse_events_total", endpoint="/stream") == 10  # 9 words + done
        assert page.value("http_requests_total", method="GET", route="/ask", status="200") == 1
        assert page.value("http_requests_total", route="/stream", status="200") == 1
        assert page.value("provider_requests_total", provider="local", model="tiny-1",
                          status="ok") == 2
        assert page.value("provider_time_to_first_token_seconds_count", provider="local") == 1
        assert page.value("token_cost_usd_total", provider="local") > 0

        records = [r for r in example.json_logs() if r["trace_id"] == TRACE]
        assert {r.get("event") for r in records} >= {"request", "provider_call"}
