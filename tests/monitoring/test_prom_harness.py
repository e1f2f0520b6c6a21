"""The Prometheus test harness (prom.run_prometheus) scrapes, answers queries and cleans up."""

from __future__ import annotations

import time
from pathlib import Path

import prom
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Done(Exception):
    """Raised inside the harness to check that it cleans up on errors too."""


def test_scrapes_a_counter_and_an_exemplar_then_cleans_up(prometheus_bin: str) -> None:
    registry = CollectorRegistry()
    counter = Counter("harness_hits_total", "Hits.", registry=registry)
    histogram = Histogram("harness_latency_seconds", "Latency.", registry=registry)
    counter.inc(7)
    histogram.observe(0.3, exemplar={"trace_id": TRACE_ID})
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    handle = None
    try:
        with pytest.raises(Done), prom.run_prometheus(
                [f"127.0.0.1:{server.server_port}"], scrape_interval="1s") as handle:
            assert handle.url.startswith("http://127.0.0.1:")
            workdir = handle.config_file.parent
            handle.wait_for_scrapes(2, timeout=30)

            [sample] = handle.query("harness_hits_total")
            assert sample["metric"]["job"] == "instrument-app"
            assert float(sample["value"][1]) == 7.0
            [scalar] = handle.query("1 + 1")
            assert float(scalar["value"][1]) == 2.0
            with pytest.raises(prom.PrometheusError, match="parse error"):
                handle.query("sum(")

            now = time.time()
            series = handle.query_exemplars("harness_latency_seconds_bucket", now - 300, now + 5)
            exemplars = [e for s in series for e in s["exemplars"]]
            assert [e["labels"] for e in exemplars] == [{"trace_id": TRACE_ID}]
            assert float(exemplars[0]["value"]) == 0.3
            assert series[0]["seriesLabels"]["le"] == "0.5"

            assert handle.rules() == []
            raise Done
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    # Stopped and removed even though the body raised.
    assert handle is not None
    assert handle._process.poll() is not None
    assert not Path(workdir).exists()


def test_wait_for_scrapes_reports_an_unreachable_target(prometheus_bin: str) -> None:
    dead = f"127.0.0.1:{prom.free_port()}"
    with prom.run_prometheus([dead]) as handle:
        with pytest.raises(prom.PrometheusError, match="connection refused"):
            handle.wait_for_scrapes(1, timeout=9)
        [sample] = handle.query('up{job="instrument-app"}')
        assert sample["value"][1] == "0"


def test_loads_the_rule_files(prometheus_bin: str) -> None:
    with prom.run_prometheus([], [prom.RECORDING_RULES, prom.ALERTS]) as handle:
        groups = {g["name"]: len(g["rules"]) for g in handle.rules()}
    assert set(groups) >= {"instrument-http", "instrument-provider", "instrument-alerts"}
    assert groups["instrument-alerts"] >= 8
