"""The metric catalog: every metric the toolkit emits, defined in one place.

Names follow Prometheus conventions: base units (seconds, USD), ``_total`` on
counters, histograms rather than precomputed percentiles. ``docs/metrics.md``
is checked against this module by the test suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


def _doubling(start: float, count: int) -> tuple[float, ...]:
    return tuple(round(start * 2**i, 6) for i in range(count))


# HTTP and span durations: sub-millisecond handlers up to a minute.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Provider calls reach minutes: 0.01 s doubling to 655.36 s.
PROVIDER_BUCKETS = _doubling(0.01, 17)
# Time per output token: the GenAI semantic conventions' advised boundaries.
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# Streams live from a second to an hour.
SSE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Cache lookups are in-process or one network hop.
CACHE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SPAN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0)

# Prometheus keeps one exemplar per histogram bucket: the latest. Refreshing a bucket's
# exemplar at most this often (seconds) keeps every bucket's exemplar fresh to well within
# a scrape interval, while a hot series stops paying for exemplars it would overwrite.
EXEMPLAR_INTERVAL = 0.1
# prometheus-client rejects exemplars whose label names+values exceed 128 runes.
MAX_EXEMPLAR_ID = 128 - len("trace_id")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what ``prometheus_client`` needs to create it, and its unit for the docs."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    buckets: tuple[float, ...] = ()
    #: how gauges aggregate across worker processes in multiprocess mode
    multiprocess_mode: str = "livesum"


CATALOG: tuple[MetricSpec, ...] = (
    # requests (server adapters)
    MetricSpec("http_requests_total", "counter", "HTTP requests handled, by route template.",
               ("method", "route", "status"), "requests"),
    MetricSpec("http_request_duration_seconds", "histogram",
               "HTTP request duration to the end of the response body (SSE excluded).",
               ("method", "route"), "seconds", HTTP_BUCKETS),
    MetricSpec("http_errors_total", "counter", "HTTP 5xx responses and unhandled exceptions.",
               ("method", "route", "status"), "requests"),
    MetricSpec("http_requests_in_progress", "gauge", "HTTP requests being handled now.",
               ("method", "route"), "requests"),
    # outbound HTTP clients
    MetricSpec("http_client_requests_total", "counter", "Outbound HTTP requests, by host.",
               ("host", "method", "status"), "requests"),
    MetricSpec("http_client_request_duration_seconds", "histogram",
               "Outbound HTTP request duration until the response body is read or closed.",
               ("host", "method"), "seconds", HTTP_BUCKETS),
    # server-sent events
    MetricSpec("sse_connections_total", "counter", "SSE streams opened.", ("endpoint",),
               "streams"),
    MetricSpec("sse_active_connections", "gauge", "SSE streams open now.", ("endpoint",),
               "streams"),
    MetricSpec("sse_stream_duration_seconds", "histogram", "SSE stream duration, open to close.",
               ("endpoint",), "seconds", SSE_BUCKETS),
    MetricSpec("sse_time_to_first_event_seconds", "histogram",
               "Time from stream open to its first event (heartbeats excluded).",
               ("endpoint",), "seconds", HTTP_BUCKETS),
    MetricSpec("sse_events_total", "counter", "SSE events sent (heartbeats excluded).",
               ("endpoint",), "events"),
    MetricSpec("sse_heartbeats_total", "counter", "SSE heartbeat comments sent.", ("endpoint",),
               "events"),
    MetricSpec("sse_streams_closed_total", "counter",
               "SSE streams closed, by outcome: completed, client_disconnect, error, cancelled.",
               ("endpoint", "outcome"), "streams"),
    # LLM providers
    MetricSpec("provider_requests_total", "counter", "LLM provider calls, by final status.",
               ("provider", "model", "status"), "requests"),
    MetricSpec("provider_errors_total", "counter", "LLM provider calls that failed, by error type.",
               ("provider", "model", "error_type"), "requests"),
    MetricSpec("provider_request_duration_seconds", "histogram",
               "LLM provider call duration; for a stream, until the stream ends.",
               ("provider", "model"), "seconds", PROVIDER_BUCKETS),
    MetricSpec("provider_time_to_first_token_seconds", "histogram",
               "Time from the start of a streaming provider call to its first item.",
               ("provider", "model"), "seconds", PROVIDER_BUCKETS),
    MetricSpec("provider_time_per_output_token_seconds", "histogram",
               "Time per output token after the first, of a streaming call that completed: "
               "(duration - time to first token) / (output tokens - 1).",
               ("provider", "model"), "seconds", TPOT_BUCKETS),
    MetricSpec("provider_tokens_total", "counter",
               "Tokens used, by type: input, output, cached_input and cache_write (parts of "
               "input), reasoning (part of output).",
               ("provider", "model", "type"), "tokens"),
    MetricSpec("provider_inflight_requests", "gauge", "LLM provider calls in flight now.",
               ("provider",), "requests"),
    MetricSpec("provider_retries_total", "counter",
               "HTTP attempts beyond the first within one provider call (the SDKs retry 429s "
               "and 5xx by themselves).",
               ("provider", "model"), "attempts"),
    MetricSpec("provider_fallbacks_total", "counter",
               "Calls a gateway moved from one provider to another (mark_fallback).",
               ("provider", "to_provider"), "calls"),
    MetricSpec("provider_ratelimit_remaining", "gauge",
               "Rate-limit headroom the provider reported in its latest response headers, by "
               "kind: requests, tokens, input_tokens, output_tokens.",
               ("provider", "model", "kind"), "units", multiprocess_mode="mostrecent"),
    MetricSpec("provider_ratelimit_limit", "gauge",
               "Rate limit the provider reported in its latest response headers, by kind.",
               ("provider", "model", "kind"), "units", multiprocess_mode="mostrecent"),
    # cost
    MetricSpec("token_cost_usd_total", "counter", "Token cost in US dollars.",
               ("provider", "model"), "USD"),
    MetricSpec("api_cost_usd_total", "counter", "Flat per-request API fees in US dollars.",
               ("provider",), "USD"),
    MetricSpec("provider_unpriced_requests_total", "counter",
               "Provider calls whose cost is unknown, by reason: no_price (tokens of a model "
               "without a price), no_usage (a successful call that reported neither usage nor "
               "a fee), cancelled (stopped or cancelled before its usage arrived), error "
               "(failed after the answer had begun).",
               ("provider", "model", "reason"), "requests"),
    # cache
    MetricSpec("cache_hits_total", "counter", "Cache lookups that hit.", ("cache",), "lookups"),
    MetricSpec("cache_misses_total", "counter", "Cache lookups that missed.", ("cache",),
               "lookups"),
    MetricSpec("cache_lookup_duration_seconds", "histogram", "Cache lookup duration.",
               ("cache",), "seconds", CACHE_BUCKETS),
    # traces and system
    MetricSpec("trace_requests_total", "counter", "Traces started or continued (root spans).",
               (), "traces"),
    MetricSpec("span_duration_seconds", "histogram", "Duration of trace spans, by span name.",
               ("span",), "seconds", SPAN_BUCKETS),
    MetricSpec("span_errors_total", "counter", "Spans that ended with an exception, by span name.",
               ("span",), "spans"),
    MetricSpec("system_uptime_seconds", "gauge", "Seconds since the instrumented process started.",
               (), "seconds", multiprocess_mode="max"),
    # the toolkit itself
    MetricSpec("instrument_internal_errors_total", "counter",
               "Errors inside the toolkit's own bookkeeping, swallowed to protect the host.",
               ("where",), "errors"),
    MetricSpec("instrument_label_overflow_total", "counter",
               "Label values recorded as 'other' because a label reached max_label_values.",
               ("metric", "label"), "values"),
    MetricSpec("instrument_log_lines_dropped_total", "counter",
               "JSON log lines dropped because configure_logging's queue was full.",
               (), "lines"),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}


def exposed_names(spec: MetricSpec) -> tuple[str, ...]:
    """The sample names a metric shows in the text exposition (for dashboards and lints)."""
    if spec.kind == "counter":
        return (spec.name, spec.name[: -len("_total")] + "_created")
    if spec.kind == "histogram":
        return tuple(spec.name + s for s in ("_bucket", "_sum", "_count", "_created"))
    return (spec.name,)
