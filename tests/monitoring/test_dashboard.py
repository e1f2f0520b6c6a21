"""Lints for the Grafana dashboard, and its queries run against a live Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import prom
import pytest
import yaml
from catalog_app import SELECTED

from instrument._catalog import BY_NAME, CATALOG, exposed_names

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
VARIABLES = ("provider", "model", "route", "endpoint", "slo")
BUILTINS = {"__rate_interval", "__interval", "__range"}
#: The panels the dashboard promises (issue text), by title.
REQUIRED_PANELS = (
    "Request rate (RPS)",
    "Error rate",
    "Request latency P50 / P95 / P99",
    "Request volume by route",
    "Error rate by route",
    "Requests in progress",
    "SSE stream duration P50 / P95",
    "SSE active connections",
    "SSE heartbeats rate",
    "SSE stream outcomes",
    "Provider usage distribution",
    "Provider latency P50 / P95 by provider and model",
    "Provider time to first token P50 / P95",
    "Provider error rate by error type",
    "Tokens per second by model, input vs output",
    "Cost rate by provider and model (USD per hour)",
    "Cost over the selected range",
    "Unpriced requests",
    "Cache hit rate",
    "Trace requests",
    "System uptime",
    "Outbound HTTP client latency by host",
    # the SLO row (rules generated from monitoring/slo.yml)
    "SLO error budget remaining",
    "SLO burn rate over 1h, 6h and 3d",
    "Cost budgets: spent and projected",
    # the SDK integrations' families
    "Provider time per output token P50 / P95",
    "Tokens per second by type: cached input, cache writes, reasoning",
    "Provider retries and fallbacks",
    "Rate-limit headroom",
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return prom.load_dashboard()


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in prom.iter_panels(dashboard["panels"]) if p["type"] != "row"]


def recorded_names() -> set[str]:
    groups = [group for path in prom.RULE_FILES
              for group in yaml.safe_load(path.read_text())["groups"]]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def known_metric(name: str) -> bool:
    catalog = {n for spec in CATALOG for n in exposed_names(spec)}
    return (name in catalog or name in recorded_names() or name in {"up", "ALERTS"}
            or name.startswith("process_"))


def labels_of(name: str) -> set[str]:
    """Labels a series name carries: from the catalog, or a recording rule's level."""
    for spec in CATALOG:
        if name in exposed_names(spec):
            return set(spec.labels)
    if ":" in name:
        return set(name.split(":")[0].split("_"))
    return set()


# --------------------------------------------------------------------------- document


def test_dashboard_is_valid_json_with_identity(dashboard: dict[str, Any]) -> None:
    json.loads(prom.DASHBOARD.read_text())  # strict parse, no trailing commas
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert dashboard["schemaVersion"] == 39
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    assert dashboard["style"] == "dark"
    assert dashboard["refresh"] == "30s"
    assert dashboard["time"]["from"].startswith("now-") and dashboard["time"]["to"] == "now"


def test_import_asks_for_the_prometheus_datasource(dashboard: dict[str, Any]) -> None:
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    # A provisioned (not imported) dashboard resolves ${DS_PROMETHEUS} through this variable.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_every_panel_is_complete(dashboard: dict[str, Any]) -> None:
    """What grafana/dashboard-linter does not check (test_dashboard_lint.py runs its rules)."""
    ids = [p["id"] for p in prom.iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel id"
    for panel in panels(dashboard):
        title = panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        for target in panel["targets"]:
            assert target.get("expr"), title
            assert target.get("legendFormat"), f"{title}: series without a legend"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title


def test_nested_row_panels_are_checked_too(dashboard: dict[str, Any]) -> None:
    nested = [p for row in dashboard["panels"] if row["type"] == "row"
              for p in row.get("panels", [])]
    assert nested, "the collapsed row's panels are part of the lint"
    assert all(p in panels(dashboard) for p in nested)


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    titles = [p["title"] for p in panels(dashboard)]
    assert len(titles) == len(set(titles)), "duplicate panel title"
    missing = [t for t in REQUIRED_PANELS if t not in titles]
    assert missing == []
    types = {p["title"]: p["type"] for p in panels(dashboard)}
    assert types["Provider usage distribution"] == "piechart"


def test_sse_outcomes_and_token_types_are_split(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(dashboard)}
    outcomes = by_title["SSE stream outcomes"]["targets"][0]
    assert "by (outcome)" in outcomes["expr"] and "{{outcome}}" in outcomes["legendFormat"]
    tokens = by_title["Tokens per second by model, input vs output"]["targets"][0]
    assert "type" in tokens["expr"] and "{{type}}" in tokens["legendFormat"]
    assert "{{model}}" in tokens["legendFormat"]
    cost = by_title["Cost over the selected range"]["targets"]
    assert all("[$__range]" in t["expr"] and "increase(" in t["expr"] for t in cost)
    assert {"token_cost_usd_total", "api_cost_usd_total"} <= {
        n for t in cost for n in prom.metric_names(t["expr"])}


def test_the_sdk_families_and_the_slo_series_are_charted(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for _, t in targets(dashboard)]
    used = {name for expr in exprs for name in prom.metric_names(expr)}
    assert {"provider_time_per_output_token_seconds_bucket", "provider_retries_total",
            "provider_fallbacks_total", "provider_ratelimit_remaining",
            "provider_ratelimit_limit", "slo:error_budget:remaining",
            "slo:sli_error:ratio_rate1h", "slo:sli_error:ratio_rate6h",
            "budget:cost_usd:spend", "budget:cost_usd:projected"} <= used
    token_types = " ".join(e for e in exprs if "provider_tokens_total" in e)
    for token_type in ("input", "output", "cached_input", "cache_write", "reasoning"):
        assert token_type in token_types, token_type


# --------------------------------------------------------------------------- queries


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels(dashboard) for t in p["targets"]]


def annotation_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    out = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out[var["name"]] = query["query"] if isinstance(query, dict) else query
    return out


def test_every_metric_name_is_in_the_catalog(dashboard: dict[str, Any]) -> None:
    exprs = [t["expr"] for _, t in targets(dashboard)] + annotation_exprs(dashboard)
    exprs += [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q)
              for q in variable_queries(dashboard).values()]
    used = {name for expr in exprs for name in prom.metric_names(expr)}
    unknown = sorted(n for n in used if not known_metric(n))
    assert unknown == []
    # The lint has teeth: the dashboard reads most of the catalog.
    assert len({n for n in used if n in BY_NAME or n.endswith("_bucket")}) >= 20


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    queries = variable_queries(dashboard)
    for name in VARIABLES:
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DS
        assert var["multi"] is True and var["includeAll"] is True and var["allValue"] == ".*"
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", queries[name])
        assert match and match.group(2) == name, queries[name]
        metric = next(iter(prom.metric_names(match.group(1))))
        assert name in labels_of(metric), f"{metric} has no label {name}"
    assert "$provider" in queries["model"], "models follow the chosen providers"


def test_every_variable_used_is_defined(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILTINS
    text = json.dumps([t["expr"] for _, t in targets(dashboard)]
                      + [link["url"] for link in dashboard["links"]])
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used - defined == set()


def test_panels_filter_by_every_variable_that_applies(dashboard: dict[str, Any]) -> None:
    """A selector on a metric with a provider/model/route/endpoint label matches `=~"$var"`."""
    problems = []
    for title, target in targets(dashboard):
        for name, matcher in prom.selectors(target["expr"]):
            for var in VARIABLES:
                if var in labels_of(name) and f'{var}=~"${var}"' not in matcher.replace(" ", ""):
                    problems.append(f"{title}: {name}{matcher} ignores ${var}")
    assert problems == []


def test_latency_panels_show_exemplars(dashboard: dict[str, Any]) -> None:
    quantile_targets = [(title, t) for title, t in targets(dashboard)
                        if "histogram_quantile" in t["expr"]]
    assert len(quantile_targets) >= 10
    for title, target in quantile_targets:
        assert target.get("exemplar") is True, title
        assert re.search(r"rate\(\w+_bucket\b", target["expr"]), title
        assert panel_unit(dashboard, title) == "s", title


def panel_unit(dashboard: dict[str, Any], title: str) -> str:
    panel = next(p for p in panels(dashboard) if p["title"] == title)
    return str(panel["fieldConfig"]["defaults"]["unit"])


def test_annotations_and_links(dashboard: dict[str, Any]) -> None:
    exprs = annotation_exprs(dashboard)
    assert any("changes(process_start_time_seconds[" in e for e in exprs)
    assert any('ALERTS{alertstate="firing"}' in e for e in exprs)
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            assert annotation["datasource"] == DS and annotation["enable"] is True
    titles = " ".join(link["title"].lower() for link in dashboard["links"])
    assert "docs" in titles and "metrics" in titles
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["metrics_url"]["query"].endswith("/metrics")


def test_dashboard_queries_substitutes_every_variable(dashboard: dict[str, Any]) -> None:
    queries = prom.dashboard_queries(prom.DASHBOARD, {"provider": "openai", "model": "gpt-4o"})
    assert len(queries) == len(targets(dashboard))
    assert not [expr for _, expr in queries if "$" in expr]
    joined = "\n".join(expr for _, expr in queries)
    assert 'provider=~"openai"' in joined and "[1m]" in joined and "[1h]" in joined
    with pytest.raises(KeyError, match="nope"):
        prom.substitute("rate(x[$nope])", {})


@pytest.mark.prometheus
def test_every_query_is_valid_promql(dashboard: dict[str, Any], promtool: str,
                                     tmp_path: Path) -> None:
    """promtool parses each panel and annotation query (as a recording rule)."""
    exprs = [expr for _, expr in prom.dashboard_queries()]
    exprs += [prom.substitute(e, prom.GRAFANA_BUILTINS) for e in annotation_exprs(dashboard)]
    rules = [{"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --------------------------------------------------------------------------- live


def query_until(live: Any, expr: str, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result: list[dict[str, Any]] = live.prom.query(expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_panel_shows_data_for_catalog_series(live: Any) -> None:
    """Each query, filtered to the fake app's provider/model/route/endpoint, returns series."""
    pending = prom.dashboard_queries(prom.DASHBOARD, SELECTED)
    deadline = time.monotonic() + 20  # rates need two scrapes in their window
    while pending and time.monotonic() < deadline:
        pending = [(title, expr) for title, expr in pending if not live.prom.query(expr)]
        time.sleep(0.5)
    assert pending == [], "queries without data"


@pytest.mark.prometheus
@pytest.mark.slow
def test_variables_filter_the_panels(live: Any) -> None:
    """Choosing a provider, model, route or endpoint that has no data empties those panels."""
    query_until(live, "sum(rate(http_requests_total[1m]))")
    for var in VARIABLES:
        other = {**SELECTED, var: "does-not-exist"}
        for title, expr in prom.dashboard_queries(prom.DASHBOARD, other):
            if "does-not-exist" in expr:
                assert live.prom.query(expr) == [], f"{title} ignores ${var}: {expr}"


@pytest.mark.prometheus
@pytest.mark.slow
def test_latency_exemplars_reach_prometheus(live: Any) -> None:
    """The exemplars a latency panel would show carry the request's trace_id."""
    query_until(live, "http_request_duration_seconds_bucket")
    now = time.time()
    found = live.prom.query_exemplars('http_request_duration_seconds_bucket{route="/chat"}',
                                      now - 300, now + 5)
    trace_ids = {e["labels"].get("trace_id") for s in found for e in s["exemplars"]}
    assert trace_ids - {None}, found
