"""Tests for the metric objects: configure, bounded labels, internal errors, multiprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import instrument
from instrument import _metrics, trace_span, use_trace_id
from instrument._catalog import CATALOG
from tests.conftest import LogCapture
from tests.helpers import value

ROOT = Path(__file__).resolve().parent.parent


def exposed(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Family name -> sample names, as Prometheus would parse the exposition."""
    text = generate_latest(registry).decode()
    return {f.name: {s.name for s in f.samples} for f in text_string_to_metric_families(text)}


# --- configure --------------------------------------------------------------------


def test_every_catalog_metric_is_registered(registry: CollectorRegistry) -> None:
    families = exposed(registry)
    for spec in CATALOG:
        family = spec.name[: -len("_total")] if spec.kind == "counter" else spec.name
        assert family in families, spec.name


def test_configuring_the_same_registry_twice_reuses_the_metrics(
        registry: CollectorRegistry) -> None:
    first = instrument.configure(registry=registry)
    second = instrument.configure(registry=registry)
    assert first is second
    with trace_span("x"):
        pass
    assert value(registry, "trace_requests_total") == 1
    assert _metrics.metrics_for(registry) is first


def test_two_namespaces_live_side_by_side_in_one_registry(registry: CollectorRegistry) -> None:
    a = instrument.configure(registry=registry, namespace="app_a")
    b = instrument.configure(registry=registry, namespace="app_b")
    a.cache_hits.child("redis").inc()
    b.cache_hits.child("redis").inc(2)
    assert value(registry, "app_a_cache_hits_total", cache="redis") == 1
    assert value(registry, "app_b_cache_hits_total", cache="redis") == 2
    assert instrument.configure(registry=registry, namespace="app_a") is a
    families = exposed(registry)
    assert "app_a_system_uptime_seconds" in families and "app_b_system_uptime_seconds" in families


def test_switching_between_registries_and_back_never_duplicates() -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    for _ in range(3):
        instrument.configure(registry=one)
        with trace_span("a"):
            pass
        instrument.configure(registry=two)
        with trace_span("b"):
            pass
    assert value(one, "span_duration_seconds_count", span="a") == 3
    assert value(two, "span_duration_seconds_count", span="b") == 3
    assert value(one, "span_duration_seconds_count", span="b") == 0


def test_a_name_already_taken_in_the_registry_is_a_counted_clash_not_a_crash(
        logs: LogCapture) -> None:
    shared = CollectorRegistry()
    theirs = Counter("http_requests_total", "Another library's counter.", ["handler"],
                     registry=shared)
    theirs.labels("/x").inc()
    m = instrument.configure(registry=shared)  # must not raise "Duplicated timeseries"
    with trace_span("still measured"):
        pass
    m.served.series("GET", "/chat").done(200, 0.01, None, 0.0)  # kept, unexposed
    assert m.clashes == ["http_requests_total"]
    assert value(shared, "span_duration_seconds_count", span="still measured") == 1
    assert value(shared, "http_requests_total", handler="/x") == 1
    assert value(shared, "instrument_internal_errors_total", where="registry") == 1
    (report,) = logs.events("instrument_internal_error")
    assert report["where"] == "registry"
    assert report["metrics"] == ["http_requests_total"]


@pytest.mark.parametrize("kwargs", [
    {"max_label_values": 0},
    {"max_label_values": -1},
    {"max_label_values": "3"},
    {"max_label_values": 2.5},
    {"max_label_values": True},
    {"namespace": "bad-name"},
    {"namespace": "has space"},
    {"namespace": "1starts_with_digit"},
    {"namespace": "caf\u00e9"},
    {"namespace": 5},
    {"registry": "not a registry"},
])
def test_configure_rejects_bad_arguments_with_value_error(kwargs: dict[str, Any],
                                                          registry: CollectorRegistry) -> None:
    before = _metrics.current()
    with pytest.raises(ValueError):
        instrument.configure(**kwargs)
    assert _metrics.current() is before  # a rejected call changes nothing


# --- bounded labels -----------------------------------------------------------------


def test_label_values_past_the_limit_become_other(registry: CollectorRegistry,
                                                  logs: LogCapture) -> None:
    m = instrument.configure(registry=registry, max_label_values=3)
    for cache in ["a", "b", "c", "d", "e", "a", "d"]:
        m.cache_hits.child(cache).inc()
    assert {labels["cache"] for labels in
            [dict(s.labels) for f in registry.collect() if f.name == "cache_hits"
             for s in f.samples if s.name == "cache_hits_total"]} == {"a", "b", "c", "other"}
    assert value(registry, "cache_hits_total", cache="a") == 2
    assert value(registry, "cache_hits_total", cache="other") == 3
    assert value(registry, "instrument_label_overflow_total", metric="cache_hits_total",
                 label="cache") == 2  # two distinct values were folded
    (warning,) = logs.events("label_overflow")
    assert warning["level"] == "WARNING"
    assert (warning["metric"], warning["label"], warning["limit"]) == ("cache_hits_total",
                                                                       "cache", 3)


def test_each_label_of_a_metric_is_bounded_on_its_own(registry: CollectorRegistry) -> None:
    m = instrument.configure(registry=registry, max_label_values=2)
    for model in ["m1", "m2", "m3"]:
        m.provider_requests.child("openai", model, "ok").inc()
    assert value(registry, "provider_requests_total", provider="openai", model="m1",
                 status="ok") == 1
    assert value(registry, "provider_requests_total", provider="openai", model="other",
                 status="ok") == 1
    assert value(registry, "instrument_label_overflow_total", metric="provider_requests_total",
                 label="model") == 1
    assert value(registry, "instrument_label_overflow_total", metric="provider_requests_total",
                 label="provider") == 0


def test_label_values_are_strings_and_cut_to_a_bounded_length(
        registry: CollectorRegistry) -> None:
    m = _metrics.current()
    m.served.series("GET", "/x" * 200).done(200, 0.01, None, 0.0)
    (labels,) = [s.labels for f in registry.collect() if f.name == "http_requests"
                 for s in f.samples if s.name == "http_requests_total"]
    assert labels["status"] == "200"
    assert len(labels["route"]) == 128


def test_the_default_limit_is_one_hundred(registry: CollectorRegistry) -> None:
    m = _metrics.current()
    assert m.max_label_values == _metrics.DEFAULT_MAX_LABEL_VALUES == 100
    for i in range(101):
        m.cache_misses.child(f"c{i}").inc()
    assert value(registry, "cache_misses_total", cache="c99") == 1
    assert value(registry, "cache_misses_total", cache="other") == 1


# --- exemplars ---------------------------------------------------------------------


def test_no_exemplar_outside_a_trace_or_for_ids_prometheus_would_refuse(
        registry: CollectorRegistry) -> None:
    name = "cache_lookup_duration_seconds_bucket"
    _metrics.current().cache_duration.child("a").observe_current(0.0002)
    assert _exemplars(registry, name) == {}
    with use_trace_id("t" * 120):
        _metrics.current().cache_duration.child("b").observe_current(0.0002)
    assert _exemplars(registry, name) == {"0.0005": "t" * 120}
    with use_trace_id("t" * 121):  # prometheus-client caps exemplar labels at 128 runes
        _metrics.current().cache_duration.child("c").observe_current(0.0002)
        with trace_span("long id"):
            pass
    assert value(registry, "cache_lookup_duration_seconds_count", cache="c") == 1
    assert value(registry, "span_duration_seconds_count", span="long id") == 1
    assert value(registry, "instrument_internal_errors_total", where="span") == 0


# --- internal errors ------------------------------------------------------------------


def test_report_internal_error_counts_every_time_and_logs_once(registry: CollectorRegistry,
                                                               logs: LogCapture) -> None:
    for _ in range(3):
        _metrics.report_internal_error("widget", RuntimeError("broke"))
    assert value(registry, "instrument_internal_errors_total", where="widget") == 3
    (report,) = logs.events("instrument_internal_error")
    assert report["where"] == "widget"
    assert report["error_type"] == "RuntimeError"
    assert report["exception"]["type"] == "RuntimeError"


def test_report_internal_error_never_raises_even_when_metrics_are_broken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise RuntimeError("no metrics")

    monkeypatch.setattr(_metrics, "current", broken)
    _metrics.report_internal_error("anywhere", ValueError("x"))
    _metrics.count_trace()


# --- multiprocess mode ---------------------------------------------------------------

WORKER = """
import json, os, sys, io
import instrument
from instrument._exposition import respond
log = io.StringIO()
instrument.configure_logging("DEBUG", sink=log)
m = instrument.configure()
instrument.configure()  # configuring again must not repeat the notice
m.provider_inflight.child("openai").inc()
m.cache_hits.child("redis").inc(int(sys.argv[1]))
with instrument.trace_span("work"):
    pass
out = {"pid": os.getpid()}
if sys.argv[2] == "report":
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(int(sys.argv[3]))  # what gunicorn's child_exit hook does
    from instrument._http import ServerRequest
    served = ServerRequest("POST", "/chat", [], access_log=False)
    served.set_route("/chat")
    out["during"] = respond("").body.decode()  # the request is in progress in this worker
    served.response_started(200)
    served.finish()
    text = respond("").body.decode()
    om = respond("", accept="application/openmetrics-text; version=1.0.0").body.decode()
    out.update(text=text, openmetrics=om, summary=json.loads(respond("/summary").body),
               health=json.loads(respond("/health").body),
               files=sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])),
               logs=[json.loads(line) for line in log.getvalue().splitlines()])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_multiprocess_mode_aggregates_workers_with_livesum_gauges(tmp_path: Path) -> None:
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}

    def worker(*args: str) -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(WORKER), *args],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    dead = worker("2", "quiet")
    out = worker("3", "report", str(dead["pid"]))

    scraped = {s.name: s for f in text_string_to_metric_families(out["text"])
               for s in f.samples if not s.name.endswith("_created")}
    assert scraped["cache_hits_total"].value == 5  # both workers' counters
    during = {(s.name, s.labels.get("route")): s.value
              for f in text_string_to_metric_families(out["during"]) for s in f.samples}
    assert during[("http_requests_in_progress", "/chat")] == 1
    final = {(s.name, s.labels.get("route"), s.labels.get("status")): s.value
             for f in text_string_to_metric_families(out["text"]) for s in f.samples}
    assert final[("http_requests_in_progress", "/chat", None)] == 0
    assert final[("http_requests_total", "/chat", "200")] == 1
    assert scraped["span_duration_seconds_count"].value == 2
    # in-flight is livesum: the dead worker's gauge is gone once it is marked dead
    assert scraped["provider_inflight_requests"].value == 1
    assert any(name.startswith("gauge_livesum_") for name in out["files"])
    assert not any(name.startswith("gauge_all_") for name in out["files"])
    assert "# {" not in out["openmetrics"]  # no exemplars in this mode
    assert out["summary"]["caches"] == [{"cache": "redis", "hits": 5, "misses": 0,
                                         "hit_ratio": 1.0}]
    assert out["health"]["status"] == "ok"
    notices = [r for r in out["logs"] if r.get("event") == "instrument_notice"]
    assert len(notices) == 1
    assert "exemplars are unavailable" in notices[0]["message"]


def _exemplars(registry: CollectorRegistry, name: str) -> dict[str, str]:
    """bucket upper bound -> exemplar trace_id, for one histogram."""
    return {s.labels["le"]: s.exemplar.labels["trace_id"]
            for family in registry.collect() for s in family.samples
            if s.name == name and s.exemplar is not None}


def test_each_bucket_gets_an_exemplar_refreshed_at_most_every_interval(
        registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(_metrics, "monotonic", lambda: clock[0])
    child = _metrics.current().cache_duration.child("answers")
    name = "cache_lookup_duration_seconds_bucket"
    child.observe(0.0002, {"trace_id": "first"})
    child.observe(0.0003, {"trace_id": "second"})  # same bucket, same instant: kept "first"
    child.observe(0.3, {"trace_id": "slow"})  # another bucket always gets its own
    assert _exemplars(registry, name) == {"0.0005": "first", "0.5": "slow"}
    clock[0] += _metrics.EXEMPLAR_INTERVAL
    child.observe(0.0004, {"trace_id": "later"})
    assert _exemplars(registry, name)["0.0005"] == "later"
    assert value(registry, "cache_lookup_duration_seconds_count", cache="answers") == 4


# --- hostile label values ------------------------------------------------------------------

HOSTILE = "\ud800x" + "\udfff" * 3 + "y" * 300  # lone surrogates (any decoded body), too long


class Hostile(Exception):
    error_type = "bad\udc80type"


def test_hostile_label_values_in_every_label_leave_both_scrape_formats_working(
        registry: CollectorRegistry) -> None:
    """A label value that cannot be encoded would make every later scrape raise: each label a
    caller can reach is made safe as it is bound (U+FFFD for bad code points, 128 chars)."""
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )

    from instrument._http import ServerRequest

    @instrument.track_provider(HOSTILE, HOSTILE)
    def call() -> str:
        raise Hostile("no")

    @instrument.track_sse(HOSTILE)
    def stream() -> Any:
        yield "event"

    with pytest.raises(Hostile):
        call()
    list(stream())
    instrument.record_cache(HOSTILE, True, 0.001)
    with trace_span(HOSTILE):
        pass
    req = ServerRequest("G\ud800T", "/p", {})
    token = req.enter()
    req.set_route(HOSTILE)
    req.response_started(200)
    req.finish()
    req.exit(token)

    text = generate_latest(registry).decode()
    om = openmetrics(registry).decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    list(parse_openmetrics(om))
    safe = "\ufffdx" + "\ufffd" * 3 + "y" * 123
    assert len(safe) == 128
    for name, label in (("provider_requests_total", "provider"),
                        ("provider_requests_total", "model"),
                        ("provider_errors_total", "error_type"),
                        ("sse_connections_total", "endpoint"), ("cache_hits_total", "cache"),
                        ("span_duration_seconds_count", "span"),
                        ("http_requests_total", "route"), ("http_requests_total", "method")):
        values = {s.labels[label] for s in samples if s.name == name}
        expected = {"G\ufffdT"} if label == "method" else (
            {"bad\ufffdtype"} if label == "error_type" else {safe})
        assert values == expected, (name, label, values)
