"""examples/httpx_client.py: both clients send the span's trace out and record client metrics."""

from __future__ import annotations

import re
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.examples import PYTHON, REPO

pytestmark = pytest.mark.slow


def test_trace_headers_reach_the_upstream_and_client_metrics_are_printed() -> None:
    done = subprocess.run([PYTHON, "examples/httpx_client.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = re.findall(r"^(sync|async) +span trace (\w+): upstream received "
                       r"X-Trace-ID=(\w+) traceparent=00-(\w+)-[0-9a-f]{16}-01$",
                       done.stdout, re.MULTILINE)
    assert [kind for kind, *_ in calls] == ["sync", "async"]
    for _, span_trace, header, parent_trace in calls:
        assert span_trace == header == parent_trace
    assert calls[0][1] != calls[1][1]  # two spans outside any request: two traces

    metric_lines = done.stdout.split("client metrics:\n", 1)[1]
    samples = {s.name: s for family in text_string_to_metric_families(metric_lines)
               for s in family.samples}
    assert samples["http_client_requests_total"].value == 2
    assert samples["http_client_requests_total"].labels["status"] == "200"
    assert samples["http_client_request_duration_seconds_count"].value == 2
