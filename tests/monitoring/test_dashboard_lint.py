"""The shipped dashboard under grafana/dashboard-linter's rules, and in Grafana's typed models."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import dashboard_lint
import prom
import pytest


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return prom.load_dashboard()


def grafana_units() -> set[str]:
    """Every unit Grafana knows, from grafana-foundation-sdk's generated list."""
    units = pytest.importorskip("grafana_foundation_sdk.models.units")
    return {v for v in vars(units).values() if isinstance(v, str) and not v.startswith("_")}


def test_the_dashboard_passes_every_rule(dashboard: dict[str, Any]) -> None:
    assert dashboard_lint.lint(dashboard, grafana_units()) == []


def first(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in prom.iter_panels(dashboard["panels"]) if p.get("title") == title)


def set_expr(title: str, expr: str) -> Callable[[dict[str, Any]], None]:
    def breaks(d: dict[str, Any]) -> None:
        first(d, title)["targets"][0]["expr"] = expr
    return breaks


def nested(d: dict[str, Any]) -> dict[str, Any]:
    """A panel inside the collapsed row: the rules walk into rows too."""
    return next(p for row in d["panels"] for p in row.get("panels", []))


#: One way to break each rule, and the rule that must say so.
BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "template-datasource-rule": lambda d: d["templating"].update(
        list=[v for v in d["templating"]["list"] if v["type"] != "datasource"]),
    "template-on-time-change-reload-rule": lambda d: next(
        v for v in d["templating"]["list"] if v["name"] == "slo").update(refresh=1),
    "panel-datasource-rule": lambda d: nested(d).update(
        datasource={"type": "prometheus", "uid": "prod-prometheus"}),
    "panel-title-description-rule": lambda d: first(d, "Rate-limit headroom").pop(
        "description"),
    "panel-units-rule": lambda d: first(d, "SLO burn rate over 1h, 6h and 3d")[
        "fieldConfig"]["defaults"].update(unit="burns"),
    "panel-no-targets-rule": lambda d: first(d, "Provider retries and fallbacks").update(
        targets=[]),
    "target-rate-interval-rule": set_expr(
        "Provider retries and fallbacks", "sum(rate(provider_retries_total[5m]))"),
    "target-job-rule": set_expr(
        "Requests in progress", 'sum(http_requests_in_progress{job="api", route=~"$route"})'),
    "target-instance-rule": set_expr(
        "System uptime", 'max(system_uptime_seconds{instance="10.0.0.1:8000"})'),
    "target-counter-agg-rule": set_expr(
        "Unpriced requests", 'sum by (provider, model) (provider_unpriced_requests_total'
        '{provider=~"$provider", model=~"$model"})'),
}


def test_every_rule_has_a_breakage() -> None:
    assert set(BREAKAGES) == set(dashboard_lint.RULES)


@pytest.mark.parametrize("rule", sorted(BREAKAGES))
def test_each_rule_finds_its_breakage(dashboard: dict[str, Any], rule: str) -> None:
    broken = copy.deepcopy(dashboard)
    BREAKAGES[rule](broken)
    problems = dashboard_lint.lint(broken, grafana_units())
    assert problems, rule
    # Without the data source variable, no panel can read it either.
    also = {"panel-datasource-rule"} if rule == "template-datasource-rule" else set()
    assert {p.split(":")[0] for p in problems} == {rule} | also, problems


def test_a_variable_in_a_job_matcher_is_allowed(dashboard: dict[str, Any]) -> None:
    ok = copy.deepcopy(dashboard)
    set_expr("Requests in progress", 'sum(http_requests_in_progress{job=~"$job"})')(ok)
    assert dashboard_lint.target_job_rule(ok) == []


# --------------------------------------------------------------------------- typed models

#: What the typed models have no field for: the import-only keys of an exported dashboard,
#: the Prometheus-specific fields of an annotation query, a variable's `definition`.
DROPPED = {"__inputs", "__elements", "__requires", "id", "builtIn", "step", "titleFormat",
           "textFormat", "tagKeys", "useValueForTime", "definition"}


def lost(original: Any, encoded: Any, path: str = "") -> list[str]:
    """Paths of ``original`` that are missing or different in ``encoded``."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [path]
        return [p for key, value in original.items()
                for p in ([f"{path}/{key}"] if key not in encoded else
                          lost(value, encoded[key], f"{path}/{key}"))]
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(original) != len(encoded):
            return [path]
        return [p for i, (a, b) in enumerate(zip(original, encoded, strict=True))
                for p in lost(a, b, f"{path}[{i}]")]
    return [] if original == encoded else [path]


def test_grafana_foundation_sdk_keeps_every_panel_field(dashboard: dict[str, Any]) -> None:
    """Loaded into the SDK's Dashboard model and encoded again, nothing of a panel is lost:
    a misspelt or misplaced panel key would be dropped by the typed model."""
    pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

    model = Dashboard.from_json(dashboard)
    assert model.panels is not None
    assert all(isinstance(p, (Panel, RowPanel)) for p in model.panels)
    encoded = json.loads(JSONEncoder().encode(model))
    missing = [p for p in lost(dashboard, encoded) if p.rsplit("/", 1)[-1] not in DROPPED]
    assert missing == []
    assert lost(dashboard["panels"], encoded["panels"]) == []


def test_the_typed_model_check_has_teeth(dashboard: dict[str, Any]) -> None:
    pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    broken = copy.deepcopy(dashboard)
    first(broken, "Rate-limit headroom")["fieldconfig"] = {"defaults": {"unit": "s"}}
    encoded = json.loads(JSONEncoder().encode(Dashboard.from_json(broken)))
    assert any(p.endswith("/fieldconfig") for p in lost(broken["panels"], encoded["panels"]))
