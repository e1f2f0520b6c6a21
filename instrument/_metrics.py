"""Metric objects for one registry, with bounded labels and cached children.

``configure()`` picks the registry (prometheus-client's default unless told
otherwise); every instrumented call then looks up ``current()``. Metrics are
created once per (registry, namespace): importing, decorating or configuring
twice never registers a name twice.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from time import monotonic
from typing import Any, cast

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from instrument._catalog import CATALOG, EXEMPLAR_INTERVAL, MAX_EXEMPLAR_ID, MetricSpec
from instrument._context import trace_context
from instrument._loggate import emit, log_enabled
from instrument._redact import scrub
from instrument._served import Series, ServedRequests, TraceCount

DEFAULT_MAX_LABEL_VALUES = 100
OVERFLOW_VALUE = "other"
# Raw label tuples remembered per family before we stop caching (the bounded
# children themselves never exceed max_label_values per label).
_CHILD_CACHE_LIMIT = 4096
_MAX_LABEL_LENGTH = 128

PROCESS_START = time.time()
# A metric-name prefix: what Prometheus accepts at the start of a name (ASCII only).
_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*", re.ASCII)


def multiprocess_dir() -> str | None:
    """The prometheus-client multiprocess directory, when running under several workers."""
    # prometheus-client still honours the deprecated lowercase spelling
    return (os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            or os.environ.get("prometheus_multiproc_dir"))  # noqa: SIM112


def _check_multiprocess_dir(path: str) -> None:
    """Refuse a multiprocess directory no worker can write its files to, saying what to do
    (prometheus-client would fail later, naming only one of its files)."""
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(
            f"PROMETHEUS_MULTIPROC_DIR is {path!r}, which is not a writable directory "
            f"({exc.strerror or exc}): create it, empty, before the workers start and let them "
            "write to it, or unset the variable for single-process metrics") from None


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """Gunicorn's ``child_exit`` hook: drop a dead worker's live gauges; its counters stay.

    Any framework served by gunicorn needs it in multiprocess mode (re-exported
    by ``instrument.adapters.flask``). Does nothing without a multiprocess directory.
    """
    path = multiprocess_dir()
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)  # type: ignore[no-untyped-call]


class Family:
    """One metric with bounded label values and a cache of bound children."""

    __slots__ = ("_children", "_limit", "_lock", "_metric", "_owner", "_seen", "spec")

    def __init__(self, spec: MetricSpec, metric: Any, owner: Metrics) -> None:
        self.spec = spec
        self._metric = metric
        self._owner = owner
        self._children: dict[tuple[str, ...], Any] = {}
        self._seen: list[set[str]] = [set() for _ in spec.labels]
        self._lock = threading.Lock()

    def child(self, *values: str) -> Any:
        """The bound child for these label values; past the limit a value becomes ``other``."""
        try:
            return self._children[values]
        except KeyError:
            return self._bind(values)

    def _bind(self, values: tuple[str, ...]) -> Any:
        with self._lock:
            bound = self._owner.bound
            bounded = [bound(self._seen[i], self.spec.name, self.spec.labels[i], raw)
                       for i, raw in enumerate(values)]
            child = self._metric.labels(*bounded) if bounded else self._metric
            if self.spec.kind == "histogram":
                child = BoundHistogram(child, self.spec.buckets, not self._owner.multiprocess)
            if len(self._children) < _CHILD_CACHE_LIMIT:
                self._children[values] = child
            return child

    @property
    def metric(self) -> Any:
        return self._metric


class BoundHistogram:
    """A histogram child whose exemplars are refreshed per bucket at most every 100 ms.

    The first observation in a bucket always carries its exemplar, so a rare slow
    request is never missed; only a bucket's rapid repeats go without one.
    """

    __slots__ = ("_bounds", "_child", "_exemplars", "_last")

    def __init__(self, child: Any, bounds: tuple[float, ...], exemplars: bool = True) -> None:
        self._child = child
        self._bounds = bounds
        self._exemplars = exemplars  # False in multiprocess mode, which cannot store them
        self._last = [-EXEMPLAR_INTERVAL] * (len(bounds) + 1)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None:
            bucket = bisect_left(self._bounds, amount)
            now = monotonic()
            if now - self._last[bucket] >= EXEMPLAR_INTERVAL:
                self._last[bucket] = now
                self._child.observe(amount, exemplar)
                return
        self._child.observe(amount)

    def observe_trace(self, amount: float, trace_id: str | None) -> None:
        """Observe with ``{"trace_id": trace_id}`` as exemplar, built only when it is kept.

        No exemplar without a trace, in multiprocess mode, or for an ID longer than
        prometheus-client accepts (exemplar labels are capped at 128 runes).
        """
        if trace_id is None or not self._exemplars or len(trace_id) > MAX_EXEMPLAR_ID:
            self._child.observe(amount)
            return
        bucket = bisect_left(self._bounds, amount)
        now = monotonic()
        if now - self._last[bucket] >= EXEMPLAR_INTERVAL:
            self._last[bucket] = now
            self._child.observe(amount, {"trace_id": trace_id})
        else:
            self._child.observe(amount)

    def observe_current(self, amount: float) -> None:
        """Observe with the current trace (if any) as exemplar."""
        ctx = trace_context.get()
        self.observe_trace(amount, ctx.trace_id if ctx is not None else None)

    @property
    def child(self) -> Any:
        """The prometheus-client child underneath."""
        return self._child


class _UptimeCollector(Collector):
    def __init__(self, name: str) -> None:
        self._name = name

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self._name, "Seconds since the instrumented process started.",
                                value=time.time() - PROCESS_START)


class Metrics:
    """Every metric of the catalog, registered in one registry."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "",
                 max_label_values: int = DEFAULT_MAX_LABEL_VALUES) -> None:
        self.registry = registry
        self.namespace = namespace
        self.max_label_values = max_label_values
        path = multiprocess_dir()
        self.multiprocess = path is not None
        if path is not None:
            _check_multiprocess_dir(path)
        self.created = time.time()
        self._warned: set[tuple[str, str]] = set()
        self._registered: list[Any] = []
        #: metric names another collector already owned in this registry
        self.clashes: list[str] = []
        self.families: dict[str, Family] = {}
        prefix = f"{namespace}_" if namespace else ""
        # Served requests (the hottest path) keep their own records in single-process mode,
        # exposed under the catalog's names when scraped; multiprocess mode needs children.
        #: per (method, route): what each served request records into
        self.served = (ServedRequests(self, None, self._child_series, _SharedInProgress())
                       if self.multiprocess else ServedRequests(self, TraceCount()))
        collectors = {} if self.multiprocess else self.served.collectors(prefix)
        self.uptime_collector = _UptimeCollector(prefix + "system_uptime_seconds")
        collectors["system_uptime_seconds"] = self.uptime_collector
        for spec in CATALOG:
            if spec.name in collectors:
                self._register(collectors[spec.name], prefix + spec.name)
            else:
                self.families[spec.name] = Family(spec, self._create(spec, prefix), self)
        f = self.families
        self.http_errors = f["http_errors_total"]
        if self.multiprocess:
            self.http_requests = f["http_requests_total"]
            self.http_duration = f["http_request_duration_seconds"]
            self.http_in_progress = f["http_requests_in_progress"]
        self.client_requests = f["http_client_requests_total"]
        self.client_duration = f["http_client_request_duration_seconds"]
        self.sse_connections = f["sse_connections_total"]
        self.sse_active = f["sse_active_connections"]
        self.sse_duration = f["sse_stream_duration_seconds"]
        self.sse_ttfe = f["sse_time_to_first_event_seconds"]
        self.sse_events = f["sse_events_total"]
        self.sse_heartbeats = f["sse_heartbeats_total"]
        self.sse_closed = f["sse_streams_closed_total"]
        self.provider_requests = f["provider_requests_total"]
        self.provider_errors = f["provider_errors_total"]
        self.provider_duration = f["provider_request_duration_seconds"]
        self.provider_ttft = f["provider_time_to_first_token_seconds"]
        self.provider_tpot = f["provider_time_per_output_token_seconds"]
        self.provider_tokens = f["provider_tokens_total"]
        self.provider_inflight = f["provider_inflight_requests"]
        self.token_cost = f["token_cost_usd_total"]
        self.api_cost = f["api_cost_usd_total"]
        self.unpriced = f["provider_unpriced_requests_total"]
        self.cache_hits = f["cache_hits_total"]
        self.cache_misses = f["cache_misses_total"]
        self.cache_duration = f["cache_lookup_duration_seconds"]
        traces = self.served.traces
        self.traces: Any = traces if traces is not None else f["trace_requests_total"].child()
        self.span_duration = f["span_duration_seconds"]
        self.span_errors = f["span_errors_total"]
        self.internal_errors = f["instrument_internal_errors_total"]
        self.label_overflow = f["instrument_label_overflow_total"]
        self.log_dropped = f["instrument_log_lines_dropped_total"].child()
        if self.clashes:
            self._report_clashes()

    def _child_series(self, method: str, route: str) -> Series:
        return ChildSeries(self, method, route)

    def _register(self, collector: Collector, name: str) -> None:
        try:
            self.registry.register(collector)
            self._registered.append(collector)
        except ValueError:
            self.clashes.append(name)

    def _create(self, spec: MetricSpec, prefix: str) -> Any:
        try:
            metric = self._build(spec, prefix + spec.name, self.registry)
        except ValueError:
            # The name is valid (the namespace is checked), so the registry
            # already holds it: another library's metric, e.g. an
            # ``http_requests_total`` of its own. Keep an unregistered twin so
            # every other metric and the host keep working.
            self.clashes.append(prefix + spec.name)
            return self._build(spec, prefix + spec.name, None)
        self._registered.append(metric)
        return metric

    @staticmethod
    def _build(spec: MetricSpec, name: str, registry: CollectorRegistry | None) -> Any:
        common: dict[str, Any] = {"labelnames": spec.labels, "registry": registry}
        if spec.kind == "counter":
            return Counter(name, spec.help, **common)
        if spec.kind == "histogram":
            return Histogram(name, spec.help, buckets=spec.buckets, **common)
        mode = cast(Any, spec.multiprocess_mode)  # a Literal in prometheus-client's stubs
        return Gauge(name, spec.help, multiprocess_mode=mode, **common)

    def _report_clashes(self) -> None:
        # Not report_internal_error(): that reads current(), which may be this
        # very object under construction.
        try:
            self.internal_errors.child("registry").inc(len(self.clashes))
            if "registry" not in _reported and log_enabled(40):
                _reported.add("registry")
                emit("ERROR", f"instrument: {', '.join(self.clashes)} already registered by "
                     "another collector; the toolkit's own are not exposed (the application "
                     "is unaffected)", {"event": "instrument_internal_error",
                                        "where": "registry", "metrics": list(self.clashes)})
        except Exception:
            pass

    def unregister(self) -> None:
        for collector in self._registered:
            self.registry.unregister(collector)
        self._registered.clear()

    def bound(self, seen: set[str], metric: str, label: str, raw: object) -> str:
        """A label value as recorded: a string that encodes (lone surrogates replaced), cut to
        128 characters, and ``other`` once ``seen`` (the values this label already took,
        under the caller's lock) is full."""
        value = raw if isinstance(raw, str) else str(raw)
        if not value.isascii():
            value = valid_text(value)
        if len(value) > _MAX_LABEL_LENGTH:
            value = value[:_MAX_LABEL_LENGTH]
        if value not in seen:
            if len(seen) >= self.max_label_values:
                self.overflow(metric, label, value)
                return OVERFLOW_VALUE
            seen.add(value)
        return value

    def overflow(self, metric: str, label: str, value: str) -> None:
        """Count a label value folded into ``other``; warn once per (metric, label)."""
        if metric != "instrument_label_overflow_total":
            self.label_overflow.child(metric, label).inc()
        key = (metric, label)
        if key not in self._warned and log_enabled(30):
            self._warned.add(key)
            emit("WARNING", f"label {label} of {metric} reached {self.max_label_values} values; "
                 "new values are recorded as 'other'", {
                     "event": "label_overflow", "metric": metric, "label": label,
                     "limit": self.max_label_values})


class ChildSeries:
    """Multiprocess mode's served-request series: the same calls over prometheus-client
    children (every worker's values live in its shared files)."""

    __slots__ = ("_duration", "_m", "_method", "_route", "in_progress")

    def __init__(self, m: Metrics, method: str, route: str) -> None:
        self._m, self._method, self._route = m, method, route
        self.in_progress = m.http_in_progress.child(method, route)
        self._duration: Any = None  # bound on first use: an SSE-only route shows none

    def done(self, status: int, elapsed: float | None, trace_id: str | None,
             now: float) -> None:
        m = self._m
        m.http_requests.child(self._method, self._route, str(status)).inc()
        m.traces.inc()
        if elapsed is not None:
            if self._duration is None:
                self._duration = m.http_duration.child(self._method, self._route)
            self._duration.observe_trace(elapsed, trace_id)


class _SharedInProgress:
    """Multiprocess mode's in-progress set: each request moves its series' shared gauge."""

    __slots__ = ("_counted",)

    def __init__(self) -> None:
        self._counted: set[Any] = set()  # the requests whose series' gauge they raised

    def add(self, request: Any, /) -> None:
        if request not in self._counted:
            self._counted.add(request)
            request.series.in_progress.inc()  # a ChildSeries, bound before the request joins

    def discard(self, request: Any, /) -> None:
        if request in self._counted:
            self._counted.discard(request)
            request.series.in_progress.dec()

    def __iter__(self) -> Iterator[Any]:  # not scraped from here: the gauges are shared
        return iter(())


def valid_text(value: str) -> str:
    """``value`` with code points that cannot be encoded (lone surrogates, which any decoded
    request body can carry) replaced by U+FFFD: such a label would fail every scrape."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        # via UTF-16, a surrogate pair written as two code points becomes the one it means
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_lock = threading.Lock()
#: the metrics ``configure()`` chose, None until first use; read it (``configured or
#: current()`` is the hot paths' one lookup), never assign it outside ``configure``
configured: Metrics | None = None
_reported: set[str] = set()


def metrics_for(registry: CollectorRegistry | None = None, namespace: str | None = None) -> Metrics:
    """The metrics registered in ``registry`` (created on first use, never twice).

    Without ``namespace``, the namespace already in use there: ``configure()``'s
    choice if it configured this registry, else the only one created in it, else "".
    """
    if registry is None and namespace is None:
        return current()
    reg = registry if registry is not None else current().registry
    with _lock:
        per_ns = _per_namespace(reg)
        if namespace is None:
            chosen = configured
            if chosen is not None and chosen.registry is reg:
                return chosen
            if len(per_ns) == 1:
                return next(iter(per_ns.values()))
        ns = namespace if namespace is not None else ""
        found = per_ns.get(ns)
        if found is None:
            found = per_ns[ns] = Metrics(reg, ns)
        return found


def current() -> Metrics:
    """The metrics chosen by ``configure()`` (the default registry unless configured)."""
    m = configured
    if m is None:
        return configure()
    return m


def configure(registry: CollectorRegistry | None = None, namespace: str = "",
              max_label_values: int = DEFAULT_MAX_LABEL_VALUES, *,
              otel: bool | None = None) -> Metrics:
    """Choose where the toolkit's metrics live. Optional: defaults to the default registry.

    ``max_label_values`` bounds how many distinct values each label of each
    metric may take; further values are recorded as ``other``. ``otel=True`` turns
    the OpenTelemetry bridge on with the global tracer and meter providers
    (``instrument.adapters.otel.enable()`` takes others), ``otel=False`` off; None leaves
    it as it is.
    """
    global configured
    if otel is not None:
        _switch_otel(otel)
    if (not isinstance(max_label_values, int) or isinstance(max_label_values, bool)
            or max_label_values < 1):
        raise ValueError(f"max_label_values must be a positive integer, got {max_label_values!r}")
    if not isinstance(namespace, str) or (namespace and not _NAMESPACE.fullmatch(namespace)):
        raise ValueError("namespace must be ASCII letters, digits and underscores, not starting "
                         f"with a digit, got {namespace!r}")
    if registry is not None and not isinstance(registry, CollectorRegistry):
        raise ValueError(f"registry must be a prometheus_client CollectorRegistry, got "
                         f"{type(registry).__name__}")
    reg = REGISTRY if registry is None else registry
    with _lock:
        per_ns = _per_namespace(reg)
        m = per_ns.get(namespace)
        if m is None:
            m = per_ns[namespace] = Metrics(reg, namespace, max_label_values)
        m.max_label_values = max_label_values
        configured = m
    if m.multiprocess:
        _say_once("multiprocess", "PROMETHEUS_MULTIPROC_DIR is set: metrics are aggregated "
                  "across worker processes; exemplars are unavailable in this mode")
    return m


def _switch_otel(on: object) -> None:
    if not isinstance(on, bool):
        raise ValueError(f"otel must be True, False or None, got {on!r}")
    if not on and "instrument._otel" not in sys.modules:
        return  # never turned on: nothing to import
    try:
        from instrument import _otel
    except ImportError as exc:
        raise ImportError("configure(otel=True) needs opentelemetry-api: "
                          "pip install 'llm-instrument[otel]'") from exc
    if on:
        _otel.enable()
    else:
        _otel.disable()


def count_trace() -> None:
    try:
        current().traces.inc()
    except Exception as exc:  # never let bookkeeping break the host
        report_internal_error("trace_count", exc)


def report_internal_error(where: str, exc: BaseException, *, via_logger: bool = True) -> None:
    """Swallowed errors of the toolkit's own: counted, and reported once per place.

    ``via_logger=False`` reports with one JSON line on stderr instead of a log
    record: for errors raised inside a log sink, where logging again cannot work.
    """
    # The error reporter itself must never raise; counting and reporting are
    # guarded separately so a broken registry still gets its one report.
    try:
        current().internal_errors.child(where).inc()
    except Exception:
        pass
    try:
        if where in _reported:
            return
        if via_logger:
            if not log_enabled(40):
                return  # not opted in: counted only (reported once the application opts in)
            _reported.add(where)
            emit("ERROR", f"instrument: internal error in {where} (swallowed; the application "
                 "is unaffected)", {"event": "instrument_internal_error", "where": where,
                                    "error_type": type(exc).__name__}, exc)
        else:
            _reported.add(where)
            sys.stderr.write(json.dumps({
                "level": "ERROR", "event": "instrument_internal_error", "where": where,
                "error_type": type(exc).__name__, "error": scrub(_text_of(exc))[:200],
                "message": f"instrument: internal error in {where} (swallowed; the application "
                           "is unaffected)"}, ensure_ascii=True) + "\n")
            sys.stderr.flush()
    except Exception:
        pass


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<str() failed: {type(exc).__name__}>"


def _say_once(key: str, message: str) -> None:
    if key not in _reported and log_enabled(20):
        _reported.add(key)
        emit("INFO", message, {"event": "instrument_notice"})


def _per_namespace(registry: CollectorRegistry) -> dict[str, Metrics]:
    # Kept on the registry itself, so it lives and dies with it (a side table
    # keyed by registry would keep every test's registry alive).
    found: dict[str, Metrics] | None = getattr(registry, "_instrument_metrics", None)
    if found is None:
        found = {}
        registry._instrument_metrics = found  # type: ignore[attr-defined]
    return found
