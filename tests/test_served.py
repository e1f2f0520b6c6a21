"""Served-request records (instrument._served): what a scrape shows, bounds, exemplars, threads."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

import instrument
from instrument import _http, _metrics, _served, trace_span
from instrument._catalog import HTTP_BUCKETS
from instrument._http import ServerRequest
from tests.helpers import Scrape

pytestmark = pytest.mark.no_internal_errors


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(x.name, x.labels, x.value) for x in _scrape(registry).samples]


def _scrape(registry: CollectorRegistry) -> Scrape:
    """The registry as ``/metrics`` shows it, parsed."""
    return Scrape(generate_latest(registry).decode())


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return _scrape(registry).value(name, **labels)


def _serve(method: str, route: str | None, status: int, seconds: float = 0.0,
           trace_id: str | None = None) -> ServerRequest:
    headers = [(b"x-trace-id", trace_id.encode())] if trace_id else []
    req = ServerRequest(method, "/raw", headers, access_log=False)
    req.start -= seconds  # as if it had started that long ago
    req.set_route(route)
    req.response_started(status)
    req.finish()
    return req


def test_a_scrape_shows_counts_a_cumulative_histogram_and_created_series(
        registry: CollectorRegistry) -> None:
    for seconds in (0.001, 0.02, 0.02, 0.3, 100.0):
        _serve("GET", "/items/{id}", 200, seconds)
    _serve("GET", "/items/{id}", 404, 0.001)
    assert _value(registry, "http_requests_total", route="/items/{id}", status="200") == 5
    assert _value(registry, "http_requests_total", route="/items/{id}", status="404") == 1
    assert _value(registry, "http_request_duration_seconds_count", route="/items/{id}") == 6
    total = _value(registry, "http_request_duration_seconds_sum", route="/items/{id}")
    assert total == pytest.approx(0.001 * 2 + 0.04 + 0.3 + 100.0, abs=0.01)
    buckets = {lab["le"]: v for n, lab, v in _samples(registry)
               if n == "http_request_duration_seconds_bucket"}
    assert list(buckets) == [repr(float(b)) for b in HTTP_BUCKETS] + ["+Inf"]
    assert buckets["0.005"] == 2 and buckets["0.025"] == 4 and buckets["0.5"] == 5
    assert buckets["60.0"] == 5 and buckets["+Inf"] == 6
    assert _value(registry, "http_requests_in_progress", route="/items/{id}") == 0
    assert _value(registry, "http_requests_created", route="/items/{id}", status="200")
    assert _value(registry, "http_request_duration_seconds_created", route="/items/{id}")


def test_in_progress_counts_a_request_from_its_route_to_its_end(
        registry: CollectorRegistry) -> None:
    req = ServerRequest("POST", "/chat", [], access_log=False)
    assert _value(registry, "http_requests_in_progress") is None  # no route known yet
    req.set_route("/chat")
    assert _value(registry, "http_requests_in_progress", method="POST", route="/chat") == 1
    req.response_started(200)
    req.finish()
    req.finish()  # idempotent: counted once
    assert _value(registry, "http_requests_in_progress", route="/chat") == 0
    assert _value(registry, "http_requests_total", route="/chat") == 1


def test_an_sse_response_is_counted_but_has_no_duration(registry: CollectorRegistry) -> None:
    req = ServerRequest("GET", "/events", [], access_log=False)
    req.set_route("/events")
    req.response_started(200, sse=True)
    req.finish()
    assert _value(registry, "http_requests_total", route="/events") == 1
    assert _value(registry, "http_request_duration_seconds_count", route="/events") is None
    assert _value(registry, "sse_connections_total", endpoint="/events") == 1


def test_each_served_request_is_a_trace_and_so_is_each_root_span(
        registry: CollectorRegistry) -> None:
    for _ in range(3):
        _serve("GET", "/", 200)
    with trace_span("job"):
        pass
    assert _value(registry, "trace_requests_total") == 4


def test_method_and_route_values_are_bounded_and_overflow_is_counted() -> None:
    reg = CollectorRegistry()
    instrument.configure(registry=reg, max_label_values=3)
    for i in range(5):
        _serve("GET", f"/r{i}", 200)
    for method in ("BREW", "WHEN", "WHY"):
        _serve(method, "/r0", 200)
    routes = {lab["route"] for n, lab, _v in _samples(reg) if n == "http_requests_total"}
    methods = {lab["method"] for n, lab, _v in _samples(reg) if n == "http_requests_total"}
    assert routes == {"/r0", "/r1", "/r2", "other"}
    assert methods == {"GET", "BREW", "WHEN", "other"}
    assert _value(reg, "http_requests_total") == 8  # folded, never dropped
    assert _value(reg, "instrument_label_overflow_total", metric="http_requests_total",
                  label="route") == 2


def test_made_up_status_codes_are_bounded_too() -> None:
    reg = CollectorRegistry()
    instrument.configure(registry=reg, max_label_values=2)
    for status in (200, 201, 299, 298):
        _serve("GET", "/", status)
    statuses = {lab["status"]: v for n, lab, v in _samples(reg) if n == "http_requests_total"}
    assert statuses == {"200": 1, "201": 1, "other": 2}


def test_long_route_values_are_cut(registry: CollectorRegistry) -> None:
    _serve("GET", "/x" * 200, 200)
    (route,) = {lab["route"] for n, lab, _v in _samples(registry) if n == "http_requests_total"}
    assert route == ("/x" * 200)[:128]


def test_duration_buckets_carry_the_trace_id_refreshed_at_most_every_interval(
        registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [500.0]
    monkeypatch.setattr(_http, "perf_counter", lambda: clock[0])  # when each request ends

    def exemplars() -> dict[str, str]:
        text = generate_openmetrics(registry).decode()
        return {s.labels["le"]: s.exemplar.labels["trace_id"]
                for f in om_families(text) for s in f.samples
                if s.name == "http_request_duration_seconds_bucket" and s.exemplar}

    _serve("GET", "/", 200, 0.001, "first")
    _serve("GET", "/", 200, 0.001, "second")  # same bucket, too soon: keeps "first"
    _serve("GET", "/", 200, 3.0, "slow")  # another bucket: kept at once
    assert exemplars() == {"0.005": "first", "5.0": "slow"}
    clock[0] += _served.EXEMPLAR_INTERVAL
    _serve("GET", "/", 200, 0.001, "third")
    assert exemplars() == {"0.005": "third", "5.0": "slow"}
    clock[0] += _served.EXEMPLAR_INTERVAL
    _serve("GET", "/", 200, 0.001, "x" * 121)  # longer than an exemplar may be: not kept
    assert exemplars() == {"0.005": "third", "5.0": "slow"}


def test_concurrent_requests_lose_no_count(registry: CollectorRegistry) -> None:
    threads, per_thread = 8, 500

    def serve() -> None:
        for i in range(per_thread):
            _serve("GET", "/busy", 200 if i % 2 else 503, 0.001 * (i % 7))

    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = threads * per_thread
    assert _value(registry, "http_requests_total", route="/busy") == total
    assert _value(registry, "http_requests_total", status="503") == total // 2
    assert _value(registry, "http_request_duration_seconds_count") == total
    assert _value(registry, "http_request_duration_seconds_bucket", le="+Inf") == total
    assert _value(registry, "http_requests_in_progress", route="/busy") == 0
    assert _value(registry, "trace_requests_total") == total


def test_a_scrape_during_traffic_is_consistent(registry: CollectorRegistry,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each series is read under its lock: its histogram's count and sum always agree (its
    +Inf bucket would not tell: prometheus-client derives the count from the buckets)."""
    monkeypatch.setattr(_http, "perf_counter", lambda: 100.0)  # each request takes 0.002 s
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            _serve("GET", "/hot", 200, 0.002)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        for _ in range(200):
            page = _scrape(registry)
            count = page.value("http_request_duration_seconds_count", route="/hot")
            total = page.value("http_request_duration_seconds_sum", route="/hot")
            # the buckets and the sum were read in one lock hold
            assert total == pytest.approx((count or 0) * 0.002, rel=1e-6)
    finally:
        stop.set()
        worker.join()


def test_the_same_exemplar_policy_as_every_other_histogram(
        registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Served requests keep their own histogram: fed the same observations at the same
    instants as a prometheus-client histogram of the toolkit (the client duration, same
    buckets), it keeps the same exemplar in every bucket."""
    clock = [500.0]
    monkeypatch.setattr(_http, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(_metrics, "monotonic", lambda: clock[0])
    client = _metrics.current().client_duration.child("upstream", "GET")

    def exemplars(name: str) -> dict[str, str]:
        text = generate_openmetrics(registry).decode()
        return {s.labels["le"]: s.exemplar.labels["trace_id"]
                for f in om_families(text) for s in f.samples
                if s.name == name and s.exemplar}

    half = _metrics.EXEMPLAR_INTERVAL / 2
    for advance, seconds, trace_id in ((0, 0.001, "a"), (0, 0.001, "b"), (0, 3.0, "slow"),
                                       (half, 0.002, "c"), (half, 0.003, "d"),
                                       (2 * half, 0.004, "x" * 121), (2 * half, 7.0, "e")):
        clock[0] += advance
        _serve("GET", "/", 200, seconds, trace_id)
        client.observe_trace(seconds, trace_id)
        served = exemplars("http_request_duration_seconds_bucket")
        assert served == exemplars("http_client_request_duration_seconds_bucket")
    assert served == {"0.005": "d", "5.0": "slow", "10.0": "e"}


def test_headers_a_server_should_not_send_start_a_fresh_trace(
        registry: CollectorRegistry, expect_internal_errors: None) -> None:
    from instrument._propagation import extract_asgi

    req = ServerRequest("GET", "/", [(b"x-trace-id", "str, not bytes")], access_log=False,
                        extract=extract_asgi)
    assert len(req.trace_id) == 32  # served, with a new W3C-shaped ID
    assert _value(registry, "instrument_internal_errors_total", where="trace_extract") == 1
