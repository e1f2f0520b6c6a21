"""``/metrics/summary``: a JSON digest computed from the registry's histograms and counters.

Percentiles are interpolated from histogram buckets the way PromQL's
``histogram_quantile`` does, so the summary and the dashboard agree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric

Labels = tuple[tuple[str, str], ...]


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Quantile ``q`` from cumulative ``(upper_bound, count)`` pairs, as histogram_quantile does."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound  # the highest finite bound, as Prometheus does
            if count == lower_count:
                return upper
            fraction = (rank - lower_count) / (count - lower_count)
            return lower_bound + (upper - lower_bound) * fraction
        lower_bound, lower_count = upper, count
    return lower_bound


class _Hist:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets: dict[float, float] = defaultdict(float)
        self.count = 0.0
        self.sum = 0.0

    def digest(self) -> dict[str, Any]:
        pairs = list(self.buckets.items())
        p50, p95 = bucket_quantile(0.5, pairs), bucket_quantile(0.95, pairs)
        return {
            "count": int(self.count),
            "mean_ms": _ms(self.sum / self.count) if self.count else None,
            "p50_ms": _ms(p50),
            "p95_ms": _ms(p95),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


Series = tuple[dict[str, str], list[tuple[float, float]], float, float]  # buckets, count, sum
_HIST_PARTS = {"_bucket", "_count", "_sum"}


class _Index:
    """Samples grouped by metric name (namespace stripped): counters as (labels, value),
    histograms as one (labels, cumulative buckets, count, sum) per series, gauges by labels."""

    def __init__(self, families: Iterable[Metric], namespace: str) -> None:
        self.prefix = f"{namespace}_" if namespace else ""
        self.counters: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        self.hists: dict[str, list[Series]] = defaultdict(list)
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        for family in families:
            self.add(family)

    @classmethod
    def of_registry(cls, registry: Any, namespace: str) -> _Index:
        """What ``_Index(registry.collect(), namespace)`` holds, read faster: prometheus-client's
        own counters and histograms are read from their children, without building the
        samples, bucket labels and exemplars a scrape needs and the summary does not."""
        if type(registry) is not CollectorRegistry or registry._target_info:
            return cls(registry.collect(), namespace)
        ix = cls((), namespace)
        with registry._lock:
            collectors = list(registry._collector_to_names)
        for collector in collectors:
            kind = type(collector)
            if kind is Counter or kind is Histogram:
                try:
                    if ix._direct(collector, kind is Histogram):
                        continue
                except (AttributeError, TypeError, ValueError):  # other insides: as collected
                    pass
            for family in collector.collect():
                ix.add(family)
        return ix

    def _name(self, name: str) -> str | None:
        if not self.prefix:
            return name
        return name[len(self.prefix):] if name.startswith(self.prefix) else None

    def _direct(self, metric: Any, histogram: bool) -> bool:
        name = self._name(metric._name)
        if name is None:
            return True
        labelnames = metric._labelnames
        if labelnames:
            with metric._lock:
                children = list(metric._metrics.items())
        else:
            children = [((), metric)]
        if not histogram:
            counts = [(dict(zip(labelnames, values, strict=True)), child._value.get())
                      for values, child in children]
            self.counters[name + "_total"].extend(counts)
            return True
        found: list[Series] = []
        for values, child in children:
            acc, buckets = 0.0, []
            for bound, bucket in zip(child._upper_bounds, child._buckets, strict=True):
                acc += bucket.get()
                buckets.append((bound, acc))
            total = child._sum.get() if child._upper_bounds[0] >= 0 else 0.0
            found.append((dict(zip(labelnames, values, strict=True)), buckets, acc, total))
        self.hists[name].extend(found)
        return True

    def add(self, family: Metric) -> None:
        name = self._name(family.name)
        if name is None:
            return
        kind = family.type
        if kind == "counter":
            counts = self.counters[name + "_total"]
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts.append((sample.labels, sample.value))
        elif kind == "histogram":
            series: dict[Labels, Series] = {}
            for sample in family.samples:
                part = sample.name[len(family.name):]
                if part not in _HIST_PARTS:
                    continue
                labels = sample.labels
                key = tuple(item for item in labels.items() if item[0] != "le")
                found = series.get(key)
                if found is None:
                    found = series[key] = (dict(key), [], 0.0, 0.0)
                if part == "_bucket":
                    found[1].append((float(labels["le"]), sample.value))
                elif part == "_count":
                    series[key] = (found[0], found[1], found[2] + sample.value, found[3])
                else:
                    series[key] = (found[0], found[1], found[2], found[3] + sample.value)
            self.hists[name].extend(series.values())
        elif kind in ("gauge", "untyped", "unknown"):
            gauges = self.gauges[name]
            for sample in family.samples:
                gauges[tuple(sorted(sample.labels.items()))] += sample.value

    def hist_by(self, name: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], _Hist]:
        out: dict[tuple[str, ...], _Hist] = defaultdict(_Hist)
        for labels, buckets, count, total in self.hists.get(name, ()):
            h = out[tuple(labels.get(k, "") for k in keys)]
            into = h.buckets
            for upper, value in buckets:
                into[upper] += value
            h.count += count
            h.sum += total
        return out

    def counter_by(self, name: str, keys: tuple[str, ...],
                   where: tuple[str, Any] | None = None) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in self.counters.get(name, ()):
            if where is not None and not where[1](labels.get(where[0], "")):
                continue
            out[tuple(labels.get(k, "") for k in keys)] += value
        return out


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _headroom(ix: _Index) -> dict[tuple[str, ...], dict[str, dict[str, float | None]]]:
    """Per (provider, model): ``{kind: {"remaining": ..., "limit": ...}}``, the latest
    rate-limit headers (a kind with only one of the two has None for the other)."""
    out: dict[tuple[str, ...], dict[str, dict[str, float | None]]] = defaultdict(dict)
    for which in ("remaining", "limit"):
        for labels, found in ix.gauges.get(f"provider_ratelimit_{which}", {}).items():
            d = dict(labels)
            kinds = out[(d.get("provider", ""), d.get("model", ""))]
            kinds.setdefault(d.get("kind", ""), {"remaining": None, "limit": None})[which] = found
    return out


def summarize(families: Iterable[Metric], namespace: str = "") -> dict[str, Any]:
    """The summary document served at ``/metrics/summary``."""
    return _summarize(_Index(families, namespace))


def summarize_registry(registry: CollectorRegistry, namespace: str = "") -> dict[str, Any]:
    """``summarize(registry.collect(), namespace)``, reading the registry faster."""
    return _summarize(_Index.of_registry(registry, namespace))


def _summarize(ix: _Index) -> dict[str, Any]:

    routes = []
    totals = ix.counter_by("http_requests_total", ("method", "route"))
    errors = ix.counter_by("http_requests_total", ("method", "route"),
                           ("status", lambda s: s.startswith("5")))
    durations = ix.hist_by("http_request_duration_seconds", ("method", "route"))
    for key in sorted(set(totals) | set(durations)):
        entry = {"method": key[0], "route": key[1], "requests": int(totals.get(key, 0)),
                 "error_rate": _ratio(errors.get(key, 0), totals.get(key, 0))}
        entry.update({k: v for k, v in durations[key].digest().items() if k != "count"})
        routes.append(entry)

    providers = []
    calls = ix.counter_by("provider_requests_total", ("provider", "model"))
    failed = ix.counter_by("provider_requests_total", ("provider", "model"),
                           ("status", lambda s: s == "error"))
    latency = ix.hist_by("provider_request_duration_seconds", ("provider", "model"))
    ttft = ix.hist_by("provider_time_to_first_token_seconds", ("provider", "model"))
    tpot = ix.hist_by("provider_time_per_output_token_seconds", ("provider", "model"))
    tokens = ix.counter_by("provider_tokens_total", ("provider", "model", "type"))
    cost = ix.counter_by("token_cost_usd_total", ("provider", "model"))
    unpriced = ix.counter_by("provider_unpriced_requests_total", ("provider", "model"))
    unpriced_why = ix.counter_by("provider_unpriced_requests_total",
                                 ("provider", "model", "reason"))
    api_cost = ix.counter_by("api_cost_usd_total", ("provider",))
    retries = ix.counter_by("provider_retries_total", ("provider", "model"))
    headroom = _headroom(ix)
    for key in sorted(set(calls) | set(latency)):
        lat = latency[key].digest() if key in latency else {}
        first = ttft[key].digest() if key in ttft else {}
        per_token = tpot[key].digest() if key in tpot else {}
        providers.append({
            "provider": key[0], "model": key[1], "requests": int(calls.get(key, 0)),
            "error_rate": _ratio(failed.get(key, 0), calls.get(key, 0)),
            "p50_ms": lat.get("p50_ms"), "p95_ms": lat.get("p95_ms"),
            "ttft_p50_ms": first.get("p50_ms"), "ttft_p95_ms": first.get("p95_ms"),
            "tpot_p50_ms": per_token.get("p50_ms"), "tpot_p95_ms": per_token.get("p95_ms"),
            "retries": int(retries.get(key, 0)),
            "ratelimit": headroom.get(key, {}),
            "tokens": {t: int(tokens.get((*key, t), 0))
                       for t in ("input", "output", "cached_input", "cache_write", "reasoning")},
            "cost_usd": round(cost.get(key, 0.0), 6),
            "unpriced_requests": int(unpriced.get(key, 0)),
            "unpriced_by_reason": {k[2]: int(v) for k, v in sorted(unpriced_why.items())
                                   if k[:2] == key and v},
        })

    spans = []
    span_hist = ix.hist_by("span_duration_seconds", ("span",))
    span_errors = ix.counter_by("span_errors_total", ("span",))
    for key in sorted(span_hist):
        digest = span_hist[key].digest()
        spans.append({"span": key[0], **digest,
                      "error_rate": _ratio(span_errors.get(key, 0), digest["count"])})

    caches = []
    hits = ix.counter_by("cache_hits_total", ("cache",))
    misses = ix.counter_by("cache_misses_total", ("cache",))
    for key in sorted(set(hits) | set(misses)):
        h, m = hits.get(key, 0), misses.get(key, 0)
        caches.append({"cache": key[0], "hits": int(h), "misses": int(m),
                       "hit_ratio": _ratio(h, h + m)})

    sse = []
    opened = ix.counter_by("sse_connections_total", ("endpoint",))
    heartbeats = ix.counter_by("sse_heartbeats_total", ("endpoint",))
    events = ix.counter_by("sse_events_total", ("endpoint",))
    closed = ix.counter_by("sse_streams_closed_total", ("endpoint", "outcome"))
    active = {tuple(v for k, v in labels if k == "endpoint"): value
              for labels, value in ix.gauges.get("sse_active_connections", {}).items()}
    sse_dur = ix.hist_by("sse_stream_duration_seconds", ("endpoint",))
    for key in sorted(set(opened) | set(active)):
        outcomes = {o: int(n) for (ep, o), n in closed.items() if ep == key[0]}
        sse.append({"endpoint": key[0], "connections": int(opened.get(key, 0)),
                    "active": int(active.get(key, 0)), "events": int(events.get(key, 0)),
                    "heartbeats": int(heartbeats.get(key, 0)), "outcomes": outcomes,
                    "duration": sse_dur[key].digest() if key in sse_dur else None})

    uptime = ix.gauges.get("system_uptime_seconds", {}).get((), 0.0)
    request_total = sum(totals.values())
    return {
        "uptime_seconds": round(uptime, 3),
        "traces": int(sum(ix.counter_by("trace_requests_total", ()).values())),
        "requests": {"total": int(request_total),
                     "error_rate": _ratio(sum(errors.values()), request_total),
                     "routes": routes},
        "providers": providers,
        "fallbacks": [{"provider": k[0], "to_provider": k[1], "calls": int(v)} for k, v in
                      sorted(ix.counter_by("provider_fallbacks_total",
                                           ("provider", "to_provider")).items())],
        "cost_usd": {"tokens": round(sum(cost.values()), 6),
                     "api": {k[0]: round(v, 6) for k, v in api_cost.items()}},
        "caches": caches,
        "sse": sse,
        "spans": spans,
        "internal_errors": int(sum(ix.counter_by("instrument_internal_errors_total",
                                                 ()).values())),
    }
