"""Served-request metrics: one record per (method, route), one lock hold per request.

A served request is the toolkit's hottest path. Through prometheus-client's
children it would take a lock five times (trace counter, in-progress up and
down, the status counter, the duration histogram). Here a request, once
routed, joins one set of requests in progress (``set.add`` is atomic: no
lock), leaves it as it ends, and holds its series' lock once, in ``done``. The
numbers become Prometheus families only when scraped, by collectors registered
under the catalog's names (``http_requests_total``, ``http_requests_in_progress``,
``http_request_duration_seconds``, ``trace_requests_total``).

Multiprocess mode cannot use them (every worker's values must live in
prometheus-client's shared files): there the owner passes ``child_series``, the
same interface over ordinary children (``instrument._metrics.ChildSeries``).
Nothing here knows the owner's type: it takes what it needs (``Owner``)."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import metrics as _client_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from instrument._catalog import CATALOG, EXEMPLAR_INTERVAL, MAX_EXEMPLAR_ID, MetricSpec

#: the catalog metrics kept here (single-process mode)
NAMES = ("http_requests_total", "http_requests_in_progress", "http_request_duration_seconds",
         "trace_requests_total")
_SPECS = {spec.name: spec for spec in CATALOG if spec.name in NAMES}
_DURATION = _SPECS["http_request_duration_seconds"]
_BOUNDS = _DURATION.buckets
_LE = [*(repr(float(b)) for b in _BOUNDS), "+Inf"]  # prometheus-client's spelling
# (method, route) pairs remembered before lookups stop being cached (each still bounded)
_SERIES_CACHE_LIMIT = 4096


class Series(Protocol):
    """What a served request records into, once it has ended."""

    def done(self, status: int, elapsed: float | None, trace_id: str | None,
             now: float) -> None: ...


class Owner(Protocol):
    """What the served records need of the metrics that own them (``Metrics``)."""

    max_label_values: int
    created: float

    def bound(self, seen: set[str], metric: str, label: str, raw: object) -> str: ...


class Routed(Protocol):
    """A request in progress: it knows the series it was routed to."""

    series: Any


class InProgress(Protocol):
    """The routed requests in progress: a set, or (multiprocess) shared gauges."""

    def add(self, request: Any, /) -> None: ...

    def discard(self, request: Any, /) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...


class RouteSeries:
    """One (method, route): requests per status and the duration histogram.

    ``done`` with ``elapsed=None`` counts the request without a duration (an SSE
    response, measured by the ``sse_*`` family instead).
    """

    __slots__ = (
        "_limit",
        "buckets",
        "created",
        "exemplars",
        "lock",
        "method",
        "refreshed",
        "route",
        "statuses",
        "sum",
        "timed",
    )

    def __init__(self, method: str, route: str, status_limit: int) -> None:
        self.method, self.route = method, route
        self.lock = threading.Lock()
        self.statuses: dict[int | str, int] = {}
        self.buckets = [0] * (len(_BOUNDS) + 1)  # per bucket, not cumulative; +Inf last
        self.exemplars: list[Exemplar | None] = [None] * (len(_BOUNDS) + 1)
        self.refreshed = [-EXEMPLAR_INTERVAL] * (len(_BOUNDS) + 1)
        self.sum = 0.0
        self.created = time.time()
        self._limit = status_limit

    def done(self, status: int, elapsed: float | None, trace_id: str | None,
             now: float) -> None:
        """Count one ended request; ``now`` is its end, a ``perf_counter()`` reading."""
        with self.lock:
            statuses = self.statuses
            count = statuses.get(status)
            if count is not None:
                statuses[status] = count + 1
            elif len(statuses) < self._limit:
                statuses[status] = 1
            else:  # a misbehaving app inventing status codes: bounded like any label
                statuses["other"] = statuses.get("other", 0) + 1
            if elapsed is None:
                return
            bucket = bisect_left(_BOUNDS, elapsed)
            self.buckets[bucket] += 1
            self.sum += elapsed
            if (now - self.refreshed[bucket] >= EXEMPLAR_INTERVAL and trace_id is not None
                    and len(trace_id) <= MAX_EXEMPLAR_ID):
                self.refreshed[bucket] = now
                self.exemplars[bucket] = Exemplar({"trace_id": trace_id}, elapsed,
                                                  time.time())


class TraceCount:
    """``trace_requests_total`` for traces that are not served requests (spans, use_trace_id)."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self.value += amount


class ServedRequests:
    """Every served-request series of one ``Metrics``, with bounded method and route labels."""

    def __init__(self, owner: Owner, traces: TraceCount | None = None,
                 child_series: Callable[[str, str], Series] | None = None,
                 shared_in_progress: InProgress | None = None) -> None:
        """Single-process records with ``traces``; multiprocess mode passes ``child_series``
        and ``shared_in_progress`` (each series' shared gauge) instead."""
        self._owner = owner
        self._child_series = child_series
        self._lock = threading.Lock()
        #: (method, route) as asked -> series: the request path reads it before ``series()``
        self.known: dict[tuple[str, str], Series] = {}
        self._bounded: dict[tuple[str, str], Series] = {}  # label values -> series
        self._seen: tuple[set[str], set[str]] = (set(), set())
        self.traces = traces  # None in multiprocess mode (a child counts them there)
        #: the routed requests in progress (``add`` once routed, ``discard`` as they end):
        #: one set for every route, grouped when scraped. ``set.add`` and ``set.discard``
        #: are atomic, so starting a request takes no lock and looks nothing up.
        self.active: InProgress = shared_in_progress if shared_in_progress is not None else set()

    def series(self, method: str, route: str) -> Series:
        found = self.known.get((method, route))
        if found is None:
            found = self._bind(method, route)
        return found

    def _bind(self, method: str, route: str) -> Series:
        owner = self._owner
        with self._lock:
            key = (owner.bound(self._seen[0], "http_requests_total", "method", method),
                   owner.bound(self._seen[1], "http_requests_total", "route", route))
            found = self._bounded.get(key)
            if found is None:
                found = self._bounded[key] = (
                    self._child_series(*key) if self._child_series is not None
                    else RouteSeries(*key, owner.max_label_values))
            if len(self.known) < _SERIES_CACHE_LIMIT:
                self.known[(method, route)] = found
            return found

    def collectors(self, prefix: str) -> dict[str, Collector]:
        """One collector per catalog name, so a name another library owns clashes alone."""
        return {name: _View(self, prefix, _SPECS[name], getattr(self, "_" + name))
                for name in NAMES}

    # -- scrape time --------------------------------------------------------------------
    def _snapshot(self) -> list[tuple[RouteSeries, dict[int | str, int], list[int],
                                      list[Exemplar | None], float]]:
        with self._lock:
            all_series = [s for s in self._bounded.values() if isinstance(s, RouteSeries)]
        out = []
        for s in all_series:
            with s.lock:
                out.append((s, dict(s.statuses), list(s.buckets), list(s.exemplars), s.sum))
        return out

    def _in_progress(self) -> dict[Series, int]:
        """The requests in progress, per series (bound as each was routed: nothing new here)."""
        counts: dict[Series, int] = {}
        for request in list(self.active):  # copied in one step: no request runs meanwhile
            series = request.series  # bound before the request joined the set
            counts[series] = counts.get(series, 0) + 1
        return counts

    def _http_requests_total(self, name: str, spec: MetricSpec) -> Metric:
        family = CounterMetricFamily(name, spec.help, labels=spec.labels)
        created = _use_created()
        for s, statuses, _b, _e, _sum in self._snapshot():
            for status, count in sorted(statuses.items(), key=lambda kv: str(kv[0])):
                family.add_metric([s.method, s.route, str(status)], count,
                                  created=s.created if created else None)
        return family

    def _http_requests_in_progress(self, name: str, spec: MetricSpec) -> Metric:
        family = GaugeMetricFamily(name, spec.help, labels=spec.labels)
        counts = self._in_progress()
        for s, *_rest in self._snapshot():
            family.add_metric([s.method, s.route], counts.get(s, 0))
        return family

    def _http_request_duration_seconds(self, name: str, spec: MetricSpec) -> Metric:
        family = HistogramMetricFamily(name, spec.help, labels=spec.labels)
        created = _use_created()
        for s, _statuses, buckets, exemplars, total in self._snapshot():
            if not any(buckets):  # never timed (SSE only): no empty histogram
                continue
            cumulative, running = [], 0
            for le, count, exemplar in zip(_LE, buckets, exemplars, strict=True):
                running += count
                cumulative.append((le, running, exemplar) if exemplar is not None
                                  else (le, running))
            family.add_metric([s.method, s.route], cumulative, total)
            if created:
                family.samples.append(Sample(name + "_created",
                                             {"method": s.method, "route": s.route}, s.created))
        return family

    def _trace_requests_total(self, name: str, spec: MetricSpec) -> Metric:
        served = sum(sum(row[1].values()) for row in self._snapshot())
        own = self.traces.value if self.traces is not None else 0.0
        family = CounterMetricFamily(name, spec.help, labels=())
        family.add_metric([], own + served,
                          created=self._owner.created if _use_created() else None)
        return family


def _use_created() -> bool:
    """Whether prometheus-client exports ``_created`` series (it can be switched off)."""
    return bool(getattr(_client_metrics, "_use_created", True))


class _View(Collector):
    """One catalog name's family, built from the served-request records when scraped."""

    def __init__(self, served: ServedRequests, prefix: str, spec: MetricSpec,
                 build: Callable[[str, MetricSpec], Metric]) -> None:
        self._name = prefix + spec.name.removesuffix("_total")
        self._spec = spec
        self._build = build

    def collect(self) -> Iterable[Metric]:
        yield self._build(self._name, self._spec)

    def describe(self) -> Iterable[Metric]:  # names only: registering stays cheap
        kind = self._spec.kind
        family = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                  "histogram": HistogramMetricFamily}[kind]
        yield family(self._name, self._spec.help, labels=self._spec.labels)
