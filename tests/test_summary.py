"""Tests for /metrics/summary: bucket interpolation and the digest of a populated registry."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import instrument
from instrument import _metrics
from instrument._summary import bucket_quantile, summarize

INF = math.inf
#: 10 observations <= 0.1, 20 more <= 0.5, 10 more <= 1.0, none above
BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


# --- bucket_quantile, against hand-computed interpolations ----------------------------


@pytest.mark.parametrize(("q", "expected"), [
    (0.1, 0.04),   # rank 4 in the first bucket: 0 + 0.1 * 4/10
    (0.25, 0.1),   # rank 10: exactly the top of the first bucket
    (0.5, 0.3),    # rank 20: 0.1 + 0.4 * (20-10)/(30-10)
    (0.75, 0.5),   # rank 30: exactly the top of the second bucket
    (0.95, 0.9),   # rank 38: 0.5 + 0.5 * (38-30)/(40-30)
    (1.0, 1.0),    # rank 40: the top of the last finite bucket
])
def test_bucket_quantile_interpolates_linearly_within_a_bucket(q: float, expected: float) -> None:
    assert bucket_quantile(q, BUCKETS) == pytest.approx(expected)


def test_bucket_quantile_does_not_care_about_input_order() -> None:
    assert bucket_quantile(0.5, list(reversed(BUCKETS))) == pytest.approx(0.3)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = [(0.1, 1.0), (1.0, 2.0), (INF, 10.0)]
    assert bucket_quantile(0.5, buckets) == 1.0  # what histogram_quantile returns
    assert bucket_quantile(0.95, buckets) == 1.0
    assert bucket_quantile(0.1, buckets) == pytest.approx(0.1)  # rank 1: top of bucket one


def test_bucket_quantile_skips_empty_buckets_below_the_rank() -> None:
    buckets = [(0.1, 0.0), (0.2, 0.0), (0.4, 4.0), (INF, 4.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.3)  # 0.2 + 0.2 * 2/4


@pytest.mark.parametrize("buckets", [[], [(0.1, 0.0), (INF, 0.0)]])
def test_bucket_quantile_of_nothing_is_none(buckets: list[tuple[float, float]]) -> None:
    assert bucket_quantile(0.5, buckets) is None


# --- summarize ----------------------------------------------------------------------------


@pytest.fixture
def populated(registry: CollectorRegistry) -> _metrics.Metrics:
    """One of everything, with values chosen so every digest is computable by hand."""
    m = _metrics.current()
    # http: 10 requests on GET /chat, 2 of them 5xx; 5 took 20 ms and 5 took 200 ms
    # (each served request is also a trace: 15 here)
    chat = m.served.series("GET", "/chat")
    for i, seconds in enumerate([0.02] * 5 + [0.2] * 5):
        chat.done(503 if i in (4, 9) else 200, seconds, None, 0.0)
    embed = m.served.series("POST", "/embed")
    for _ in range(5):
        embed.done(200, None, None, 0.0)  # counted, not timed (like an SSE response)
    # provider: 4 calls, one failed; durations 1.5 s x3 and 3 s x1
    m.provider_requests.child("openai", "gpt-4o", "ok").inc(3)
    m.provider_requests.child("openai", "gpt-4o", "error").inc(1)
    for seconds in (1.5, 1.5, 1.5, 3.0):
        m.provider_duration.child("openai", "gpt-4o").observe(seconds)
    m.provider_ttft.child("openai", "gpt-4o").observe(0.015)
    m.provider_tpot.child("openai", "gpt-4o").observe(0.03)
    m.provider_tokens.child("openai", "gpt-4o", "input").inc(1200)
    m.provider_tokens.child("openai", "gpt-4o", "output").inc(300)
    m.provider_tokens.child("openai", "gpt-4o", "cached_input").inc(200)
    m.token_cost.child("openai", "gpt-4o").inc(0.0123)
    m.unpriced.child("openai", "gpt-4o", "no_price").inc(0)
    m.api_cost.child("serpapi").inc(0.01)
    m.families["provider_retries_total"].child("openai", "gpt-4o").inc(2)
    m.families["provider_ratelimit_remaining"].child("openai", "gpt-4o", "requests").set(9)
    m.families["provider_ratelimit_limit"].child("openai", "gpt-4o", "requests").set(10)
    m.families["provider_ratelimit_remaining"].child("openai", "gpt-4o", "tokens").set(500)
    m.families["provider_fallbacks_total"].child("openai", "anthropic").inc(3)
    # cache: 3 hits, 1 miss
    m.cache_hits.child("redis").inc(3)
    m.cache_misses.child("redis").inc(1)
    # SSE: 2 streams opened, 1 still open, 10 events, 4 heartbeats, 1 completed
    m.sse_connections.child("/stream").inc(2)
    m.sse_active.child("/stream").inc()
    m.sse_events.child("/stream").inc(10)
    m.sse_heartbeats.child("/stream").inc(4)
    m.sse_closed.child("/stream", "completed").inc()
    m.sse_duration.child("/stream").observe(7.0)
    # spans: "retrieve" 4 x 3 ms
    for _ in range(4):
        m.span_duration.child("retrieve").observe(0.003)
    m.traces.inc(4)
    return m


def test_summary_digests_routes(populated: _metrics.Metrics,
                                registry: CollectorRegistry) -> None:
    doc = summarize(registry.collect())
    assert doc["requests"]["total"] == 15
    assert doc["requests"]["error_rate"] == round(2 / 15, 4)
    chat, embed = doc["requests"]["routes"]
    assert chat == {"method": "GET", "route": "/chat", "requests": 10, "error_rate": 0.2,
                    "mean_ms": 110.0, "p50_ms": 25.0, "p95_ms": 235.0}
    # p50: rank 5 fills bucket (0.01, 0.025]; p95: rank 9.5 is 0.1 + 0.15 * 4.5/5 = 0.235
    assert embed == {"method": "POST", "route": "/embed", "requests": 5, "error_rate": 0.0,
                     "mean_ms": None, "p50_ms": None, "p95_ms": None}


def test_summary_digests_providers_tokens_and_cost(populated: _metrics.Metrics,
                                                   registry: CollectorRegistry) -> None:
    doc = summarize(registry.collect())
    (provider,) = doc["providers"]
    # provider buckets double from 0.01 s: ..., 1.28, 2.56, 5.12
    # p50: rank 2 of 3 in (1.28, 2.56] -> 1.28 + 1.28 * 2/3; p95: rank 3.8 in (2.56, 5.12]
    assert provider == {
        "provider": "openai", "model": "gpt-4o", "requests": 4, "error_rate": 0.25,
        "p50_ms": pytest.approx(1280 + 1280 * 2 / 3, abs=1e-3),
        "p95_ms": pytest.approx(2560 + 2560 * 0.8, abs=1e-3),
        "ttft_p50_ms": pytest.approx(15.0, abs=1e-3),  # rank .5 in (0.01, 0.02]
        "ttft_p95_ms": pytest.approx(19.5, abs=1e-3),
        "tpot_p50_ms": pytest.approx(37.5, abs=1e-3),  # rank .5 in (0.025, 0.05]
        "tpot_p95_ms": pytest.approx(48.75, abs=1e-3),
        "retries": 2,
        "ratelimit": {"requests": {"remaining": 9, "limit": 10},
                      "tokens": {"remaining": 500, "limit": None}},
        "tokens": {"input": 1200, "output": 300, "cached_input": 200, "cache_write": 0,
                   "reasoning": 0},
        "cost_usd": 0.0123, "unpriced_requests": 0, "unpriced_by_reason": {},
    }
    assert doc["fallbacks"] == [{"provider": "openai", "to_provider": "anthropic", "calls": 3}]
    assert doc["cost_usd"] == {"tokens": 0.0123, "api": {"serpapi": 0.01}}


def test_summary_digests_caches_sse_spans_and_traces(populated: _metrics.Metrics,
                                                     registry: CollectorRegistry) -> None:
    doc = summarize(registry.collect())
    assert doc["caches"] == [{"cache": "redis", "hits": 3, "misses": 1, "hit_ratio": 0.75}]
    (sse,) = doc["sse"]
    assert {k: v for k, v in sse.items() if k != "duration"} == {
        "endpoint": "/stream", "connections": 2, "active": 1, "events": 10, "heartbeats": 4,
        "outcomes": {"completed": 1}}
    assert sse["duration"]["count"] == 1
    assert sse["duration"]["p50_ms"] == pytest.approx(7500.0)  # rank .5 of 1 in (5, 10]
    assert doc["spans"] == [{"span": "retrieve", "count": 4, "mean_ms": 3.0,
                             "p50_ms": pytest.approx(3.0), "p95_ms": pytest.approx(4.8),
                             "error_rate": 0.0}]
    assert doc["traces"] == 4 + 15
    assert doc["internal_errors"] == 0
    assert doc["uptime_seconds"] > 0


def test_summary_of_an_empty_registry_has_no_rates(registry: CollectorRegistry) -> None:
    doc = summarize(registry.collect())
    assert doc["requests"] == {"total": 0, "error_rate": None, "routes": []}
    assert doc["providers"] == doc["caches"] == doc["sse"] == doc["spans"] == []
    assert doc["fallbacks"] == []
    assert doc["traces"] == 0


def test_summary_reads_only_its_own_namespace() -> None:
    shared = CollectorRegistry()
    app = instrument.configure(registry=shared, namespace="app")
    other = instrument.configure(registry=shared, namespace="other")
    app.cache_hits.child("redis").inc(2)
    other.cache_hits.child("redis").inc(7)
    doc: dict[str, Any] = summarize(shared.collect(), "app")
    assert doc["caches"] == [{"cache": "redis", "hits": 2, "misses": 0, "hit_ratio": 1.0}]
    assert doc["uptime_seconds"] > 0
    # metrics_summary follows configure(): "other" was configured last
    assert instrument.metrics_summary(shared)["caches"][0]["hits"] == 7


def test_metrics_summary_of_a_namespaced_registry_adds_no_unprefixed_copy() -> None:
    reg = CollectorRegistry()
    instrument.configure(registry=reg, namespace="gw").cache_misses.child("kv").inc()
    instrument.configure(registry=CollectorRegistry())  # the registry is no longer current
    assert instrument.metrics_summary(reg)["caches"] == [
        {"cache": "kv", "hits": 0, "misses": 1, "hit_ratio": 0.0}]
    names = {family.name for family in reg.collect()}
    assert "gw_cache_misses" in names
    assert "cache_misses" not in names


@pytest.mark.parametrize("namespace", ["", "gw"])
def test_the_registry_read_directly_gives_the_collected_summary(namespace: str) -> None:
    """/metrics/summary reads prometheus-client's counters and histograms from their children
    (a fast path); the document must be the one built from ``registry.collect()``."""
    from prometheus_client import Counter, Histogram

    from instrument._summary import summarize_registry

    reg = CollectorRegistry()
    m = instrument.configure(registry=reg, namespace=namespace)
    for i, seconds in enumerate((0.02, 0.2, 1.5, 3.0, 40.0)):
        m.provider_requests.child("openai", f"m{i % 2}", "error" if i == 3 else "ok").inc()
        m.provider_duration.child("openai", f"m{i % 2}").observe(seconds)
        m.served.series("GET", f"/r{i % 2}").done(200 + 300 * (i == 4), seconds, None, 0.0)
    m.span_duration.child("retrieve").observe(0.003)
    m.cache_hits.child("redis").inc(3)
    m.traces.inc(4)
    prefix = f"{namespace}_" if namespace else ""
    Counter(f"{prefix}cache_misses_extra", "unlabelled, ignored", registry=reg).inc()
    Histogram(f"{prefix}unlabelled_seconds", "x", registry=reg).observe(0.1)
    direct, collected = summarize_registry(reg, namespace), summarize(reg.collect(), namespace)
    direct.pop("uptime_seconds"), collected.pop("uptime_seconds")
    assert direct == collected
    assert direct["providers"][0]["requests"] == 3 and direct["requests"]["total"] == 5
