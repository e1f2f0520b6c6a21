"""End to end: real traffic through the toolkit, a real Prometheus, every dashboard panel.

A FastAPI app instrumented with the Starlette adapter, the decorators and the
OpenAI and Anthropic SDK integrations (:mod:`traffic_app`; the real SDKs talk to
the fake provider of :mod:`tests.fakes.llm_server`, which answers some calls
with a 429 or 500 first) serves real requests on loopback while Prometheus scrapes
its ``/metrics`` every second with both rule files loaded and exemplar storage
on. Then every panel query of the dashboard, with the template variables
filled in twice (Grafana's "All", and every label value Prometheus really has
as a multi-value selection), must return data and carry the labels its legend
names; so must every recording rule; every rule, alerts included, must
evaluate without error; and the exemplar API must return the trace IDs the app
sent back in ``X-Trace-ID``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import prom
import pytest
import yaml
from prometheus_client import CollectorRegistry
from traffic_app import MODELS, W3C_TRACE_ID, Traffic, create_app, serve

import instrument
from tests.fakes.llm_server import serve_fake_llm

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

#: Grafana's built-in intervals: a rate window that holds many 1 s scrapes, and a
#: range that covers the whole test.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
#: Low enough that the client-chosen model names overflow it (the "Label values
#: overflowed to 'other'" panel), high enough for every other label of the app.
MAX_LABEL_VALUES = 20
OVERFLOW_MODELS = 20
#: Label values the traffic must have produced, per template variable.
EXPECTED_VALUES = {
    "provider": set(MODELS),
    "model": set(MODELS.values()) | {"other"},
    "route": {"/chat", "/ask", "/search", "/ticker", "/items/{item_id}", "/upstream", "/boom",
              "__unmatched__"},
    "endpoint": {"/search", "/ticker"},
}
#: Recording rules evaluated for errors only, each with the reason. None today: even
#: the 1-day TTFT baseline (provider_model:provider_time_to_first_token_seconds:p95_1d)
#: has data, since rate() over [1d] needs only two samples inside the window. What the
#: test cannot show is that baseline being a day old, so the alert comparing against it
#: (ProviderTimeToFirstTokenRegression) is checked for healthy evaluation only, like
#: every alert whose `for:` is longer than the test.
NO_DATA_EXPECTED: dict[str, str] = {}
#: The one alert that must fire: its `for:` is 0m and the traffic uses an unpriced model.
FIRING = ("UnpricedModelSeen", "local")
DEADLINE = 25.0  # seconds for everything to show data once Prometheus has scraped twice

Check = tuple[str, str]  # (what, PromQL)


# --------------------------------------------------------------------------- Grafana's side


def regex_escape(value: str) -> str:
    """Grafana's escaping of one value of a multi-value variable used in ``=~"..."``:
    regex metacharacters get a backslash, itself doubled inside the PromQL string."""
    return re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\\\" + m.group(), value)


def multi_value(values: list[str]) -> str:
    """What Grafana substitutes for a multi-value variable with these values selected."""
    escaped = [regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def label_values(handle: prom.PromHandle, query: str, chosen: Mapping[str, str]) -> list[str]:
    """A variable's ``label_values(selector, label)``, run the way Grafana runs it (the
    label values API), with the variables chosen so far substituted."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert match, query
    selector = prom.substitute(match.group(1), chosen)
    now = time.time()
    # PromHandle has no wrapper for this endpoint; its _get does the error handling.
    values = handle._get(f"/api/v1/label/{match.group(2)}/values",
                         {"match[]": selector, "start": repr(now - 600), "end": repr(now)})
    return sorted(values)


def resolve_variables(handle: prom.PromHandle) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Every query variable with all of its values selected, in dashboard order (so
    ``model`` follows ``provider``), as Grafana substitutes them; and the raw values."""
    chosen: dict[str, str] = dict(BUILTINS)
    raw: dict[str, list[str]] = {}
    for var in prom.load_dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        raw[var["name"]] = values = label_values(handle, query, chosen)
        if values:  # else the "All" default stays, and EXPECTED_VALUES reports it
            chosen[var["name"]] = multi_value(values)
    return chosen, raw


def legends() -> list[str]:
    """Each target's legend, in the order of ``prom.dashboard_queries``."""
    return [str(target.get("legendFormat", ""))
            for panel in prom.iter_panels(prom.load_dashboard()["panels"])
            for target in panel.get("targets", []) if target.get("expr")]


def recording_rules() -> list[Check]:
    """The hand-written recording rules and those generated from the SLO spec."""
    groups = [group for path in (prom.RECORDING_RULES, prom.SLO_RULES)
              for group in yaml.safe_load(path.read_text())["groups"]]
    return [(rule["record"], rule["expr"]) for group in groups for rule in group["rules"]
            if "record" in rule]


def annotation_queries() -> list[Check]:
    return [(a["name"], prom.substitute(a["expr"], BUILTINS))
            for a in prom.load_dashboard()["annotations"]["list"] if a.get("expr")]


# --------------------------------------------------------------------------- checks


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample that is a number: a panel of NaNs (0/0) shows nothing either."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def without_data(handle: prom.PromHandle, kind: str, checks: list[Check]) -> list[str]:
    """One failure per query that returns no number (or an error), naming it."""
    failures = []
    for name, expr in checks:
        try:
            if has_data(handle.query(expr)):
                continue
            failures.append(f"{kind} {name!r} returned no data: {expr}")
        except prom.PrometheusError as exc:
            failures.append(f"{kind} {name!r} failed: {expr}\n    {exc}")
    return failures


def poll(check: Callable[[], list[str]], deadline: float) -> list[str]:
    """Run ``check`` until it reports nothing or the deadline passes; its last failures."""
    failures = check()
    while failures and time.monotonic() < deadline:
        time.sleep(0.5)
        failures = check()
    return failures


def legend_labels_missing(handle: prom.PromHandle, checks: list[tuple[str, str, str]]
                          ) -> list[str]:
    """Series lacking a label their panel's legend prints (Grafana would print nothing)."""
    failures = []
    for title, legend, expr in checks:
        wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        for series in handle.query(expr):
            missing = wanted - set(series["metric"])
            if missing:
                failures.append(f"panel {title!r}: legend {legend!r} names {sorted(missing)}, "
                                f"absent from {series['metric']}: {expr}")
                break
    return failures


def rule_health(handle: prom.PromHandle) -> list[str]:
    """Every loaded rule, alerts included, evaluated and healthy."""
    return [f"rule {rule['name']} ({group['name']}): health {rule.get('health')} "
            f"{rule.get('lastError', '')}".rstrip()
            for group in handle.rules() for rule in group["rules"]
            if rule.get("health") != "ok"]


def firing(handle: prom.PromHandle) -> list[str]:
    alerts = {(a["labels"]["alertname"], a["labels"].get("provider"))
              for a in handle.alerts() if a["state"] == "firing"}
    return [] if FIRING in alerts else [f"alert {FIRING} is not firing: {sorted(alerts)}"]


def exemplar_problems(handle: prom.PromHandle, metric: str, since: float,
                      returned: set[str]) -> list[str]:
    """The metric's exemplars must hold W3C trace IDs, each one the app returned."""
    series = handle.query_exemplars(metric, since, time.time() + 5)
    ids = {e["labels"].get("trace_id", "") for s in series for e in s["exemplars"]}
    if not ids:
        return [f"exemplars of {metric}: none stored"]
    bad = sorted(i for i in ids if not W3C_TRACE_ID.fullmatch(i))
    unknown = sorted(ids - returned)
    if bad or unknown:
        return [f"exemplars of {metric}: malformed {bad[:5]}, never returned in X-Trace-ID "
                f"{unknown[:5]} ({len(ids)} trace IDs)"]
    return []


# --------------------------------------------------------------------------- the test


def test_dashboard_and_rules_on_real_traffic(prometheus_bin: str,
                                             registry: CollectorRegistry) -> None:
    started = time.time()
    # conftest made ``registry`` current; the adapter's /metrics serves it.
    instrument.configure(registry=registry, max_label_values=MAX_LABEL_VALUES)
    failures: list[str] = []
    with ExitStack() as stack:
        # The fake provider stops last, pass or fail: after the traffic and the app.
        fake = stack.enter_context(serve_fake_llm())
        base_url = stack.enter_context(serve(create_app(fake.url), prom.free_port()))
        traffic = stack.enter_context(Traffic(base_url, OVERFLOW_MODELS, fake))
        traffic.wait_rounds(1, timeout=15)  # every series exists before the first scrape
        handle = stack.enter_context(prom.run_prometheus(
            [base_url.removeprefix("http://")], list(prom.RULE_FILES),
            scrape_interval="1s"))
        workdir = handle.config_file.parent
        handle.wait_for_scrapes(2, timeout=30)  # traffic keeps flowing meanwhile
        deadline = time.monotonic() + DEADLINE

        # -- template variables, as Grafana resolves them -----------------------------
        chosen, raw = resolve_variables(handle)
        for name, expected in EXPECTED_VALUES.items():
            if expected - set(raw.get(name, [])):
                failures.append(f"variable ${name}: {sorted(expected - set(raw.get(name, [])))}"
                                f" missing from {raw.get(name)}")
        for provider, model in MODELS.items():  # $model follows $provider
            models = label_values(handle, 'label_values(provider_requests_total'
                                  '{provider=~"$provider"}, model)', {"provider": provider})
            if model not in models or (provider != "local" and models != [model]):
                failures.append(f"variable $model with provider {provider}: {models}")

        # -- every panel query, with "All" and with every real value selected -------------
        all_queries = prom.dashboard_queries(prom.DASHBOARD, BUILTINS)
        value_queries = prom.dashboard_queries(prom.DASHBOARD, chosen)
        assert len(all_queries) == len(value_queries) == len(legends()) >= 40
        panels = ([(f"{title} [All]", expr) for title, expr in all_queries]
                  + [(f"{title} [every value]", expr) for title, expr in value_queries])
        failures += poll(lambda: without_data(handle, "panel", panels), deadline)
        failures += legend_labels_missing(
            handle, [(title, legend, expr)
                     for (title, expr), legend in zip(all_queries, legends(), strict=True)])

        # -- every recording rule: its expression, then the series the rule manager wrote --
        rules = recording_rules()
        assert len(rules) >= 20
        rule_checks = [(record, expr) for record, expr in rules if record not in NO_DATA_EXPECTED]
        rule_checks += [(f"{record} (recorded)", record) for record, _ in rule_checks]
        failures += poll(lambda: without_data(handle, "recording rule", rule_checks), deadline)
        for record, expr in rules:
            if record in NO_DATA_EXPECTED:
                handle.query(expr)  # raises on an evaluation error

        # -- rules and alerts evaluate cleanly; annotations are valid queries -------------
        failures += poll(lambda: rule_health(handle), deadline)
        failures += poll(lambda: firing(handle), deadline)
        for name, expr in annotation_queries():
            # The deployment annotation has data only after a restart: errors count here.
            try:
                handle.query(expr)
            except prom.PrometheusError as exc:
                failures.append(f"annotation {name!r}: {exc}")

        # -- exemplars: latency points link to the trace IDs the app returned -------------
        traffic.stop()  # every response's X-Trace-ID is recorded from here on
        for metric in ("http_request_duration_seconds_bucket",
                       "provider_request_duration_seconds_bucket"):
            failures += exemplar_problems(handle, metric, started - 60, traffic.trace_ids)

        # -- and the traffic went as planned -----------------------------------------------
        failures += [f"traffic: {error}" for error in traffic.errors]
        if traffic.disconnects < 1 or traffic.streams_completed < 2 or traffic.fallbacks < 1:
            failures.append(f"traffic: {traffic.disconnects} disconnects, "
                            f"{traffic.streams_completed} streams read to the end, "
                            f"{traffic.fallbacks} fallbacks")
        retried = [r for r in fake.received if r.headers.get("x-stainless-retry-count", "0")
                   != "0"]
        if len(retried) < 3 * traffic.rounds:  # three SDK retries a round
            failures.append(f"traffic: {len(retried)} SDK retries in {traffic.rounds} rounds")

    # Prometheus is stopped and its data gone; uvicorn's thread has ended.
    assert handle._process.poll() is not None and not Path(workdir).exists()
    assert not [t for t in threading.enumerate() if t.name == "e2e-uvicorn" and t.is_alive()]
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)
