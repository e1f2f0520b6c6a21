"""The Prometheus rule files and config: promtool checks, unit tests, naming and catalog lints."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import prom
import pytest
import yaml

from instrument._catalog import BY_NAME, CATALOG, exposed_names

ALERTS_TEST = Path(__file__).resolve().parent / "alerts_test.yml"
SEVERITIES = {"critical", "warning", "info"}
#: Series that Prometheus makes itself.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def show(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return rules(prom.ALERTS)


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules(prom.RECORDING_RULES)}


def slo_recorded_names() -> set[str]:
    return {rule["record"] for rule in rules(prom.SLO_RULES) if "record" in rule}


def allowed_names() -> set[str]:
    names = {n for spec in CATALOG for n in exposed_names(spec)}
    return names | recorded_names() | slo_recorded_names() | PROMETHEUS_SERIES


# --------------------------------------------------------------------------- promtool


@pytest.mark.prometheus
@pytest.mark.parametrize("path", prom.RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(promtool: str, path: Path) -> None:
    result = run([promtool, "check", "rules", str(path)], cwd=path.parent)
    assert result.returncode == 0, show(result)
    assert "SUCCESS" in result.stdout, show(result)


@pytest.mark.prometheus
def test_promtool_check_config_finds_every_rule_file(promtool: str, tmp_path: Path) -> None:
    """The rule paths in prometheus.yml resolve from the config's folder, whatever the cwd."""
    result = run([promtool, "check", "config", str(prom.PROMETHEUS_CONFIG)], cwd=tmp_path)
    assert result.returncode == 0, show(result)
    assert f"{len(prom.RULE_FILES)} rule files found" in result.stdout, show(result)
    for path in prom.RULE_FILES:
        assert f"{len(rules(path))} rules found" in result.stdout, show(result)


@pytest.mark.prometheus
def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run([promtool, "test", "rules", str(ALERTS_TEST.relative_to(prom.REPO_ROOT))],
                 cwd=prom.REPO_ROOT)
    assert result.returncode == 0, show(result)
    assert "SUCCESS" in result.stdout, show(result)


@pytest.mark.prometheus
def test_promtool_unit_tests_fail_when_a_threshold_moves(promtool: str, tmp_path: Path) -> None:
    """The unit tests pin the thresholds: loosening one makes `promtool test rules` fail."""
    prometheus_dir = tmp_path / "monitoring" / "prometheus"
    prometheus_dir.mkdir(parents=True)
    (prometheus_dir / "recording_rules.yml").write_text(prom.RECORDING_RULES.read_text())
    text = prom.ALERTS.read_text()
    loosened = text.replace("route:http_errors:ratio_rate5m > 0.05",
                            "route:http_errors:ratio_rate5m > 0.5")
    assert loosened != text
    (prometheus_dir / "alerts.yml").write_text(loosened)
    tests_dir = tmp_path / "tests" / "monitoring"
    tests_dir.mkdir(parents=True)
    (tests_dir / "alerts_test.yml").write_text(ALERTS_TEST.read_text())
    result = run([promtool, "test", "rules", "tests/monitoring/alerts_test.yml"], cwd=tmp_path)
    assert result.returncode != 0, show(result)
    assert "HTTPHighErrorRate" in result.stdout + result.stderr, show(result)


# --------------------------------------------------------------------------- unit-test coverage


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in load(ALERTS_TEST)["tests"]:
        assert group.get("input_series"), f"test group without series: {group.get('name')}"
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never shown firing in alerts_test.yml"
    assert names - quiet == set(), "alerts never shown staying quiet in alerts_test.yml"
    assert (fires | quiet) - names == set(), "alerts_test.yml tests alerts that do not exist"


def test_alerts_test_checks_recording_rules() -> None:
    checked = {case["expr"] for group in load(ALERTS_TEST)["tests"]
               for case in group.get("promql_expr_test", [])}
    used = {name for expr in checked for name in prom.metric_names(expr)}
    assert len(used & recorded_names()) >= 3, checked


# --------------------------------------------------------------------------- alert hygiene


def output_labels(expr: str) -> set[str]:
    """The labels an alert's series carry: from recording-rule levels, `by` clauses and `up`."""
    labels: set[str] = set()
    for name in prom.metric_names(expr):
        if ":" in name:
            level = name.split(":")[0]
            labels |= set(level.split("_"))
        elif name == "up":
            labels |= {"job", "instance"}
    for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    labels.discard("le")
    return labels


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_is_complete(rule: dict[str, Any]) -> None:
    """Severity, summary, description naming every label the alert carries, and a `for`."""
    assert rule["labels"]["severity"] in SEVERITIES
    assert "for" in rule, "state `for` explicitly, even when it is 0m"
    notes = rule["annotations"]
    assert notes.get("summary") and notes.get("description")
    labels = output_labels(rule["expr"])
    assert labels, f"cannot tell which labels {rule['alert']} carries"
    text = notes["summary"] + notes["description"]
    missing = {label for label in labels if f"$labels.{label}" not in text}
    assert missing == set(), f"{rule['alert']} does not name {missing}"


def test_every_threshold_is_listed_at_the_top_of_alerts_yml() -> None:
    header = prom.ALERTS.read_text().split("groups:")[0]
    for rule in alerts():
        assert rule["alert"] in header
        numbers = re.findall(r"(?<![\w.:\[])\d+(?:\.\d+)?(?![\w\]])", rule["expr"])
        for number in numbers:
            assert number in header, f"{rule['alert']}: threshold {number} not in the header"
        assert rule["for"] in header, f"{rule['alert']}: for {rule['for']} not in the header"


# --------------------------------------------------------------------------- names


def test_recording_rule_names_are_level_metric_operation() -> None:
    names = [rule["record"] for rule in rules(prom.RECORDING_RULES)]
    assert len(names) == len(set(names)), "duplicate recording rule"
    catalog_labels = {label for spec in CATALOG for label in spec.labels}
    for name in names:
        level, metric, operation = name.split(":")
        assert set(level.split("_")) <= catalog_labels, f"{name}: level {level}"
        assert metric, name
        assert re.fullmatch(r"(rate|ratio_rate|hit_ratio_rate|p\d\d)_?\d+[smhd]", operation), name
    assert "route:http_request_duration_seconds:p95_5m" in names


def test_recording_rule_levels_match_their_by_clauses() -> None:
    """`provider_model:...` keeps exactly provider and model (plus le for bucket rates)."""
    for rule in rules(prom.RECORDING_RULES):
        level = set(rule["record"].split(":")[0].split("_"))
        clauses = re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"])
        for clause in clauses:
            kept = {label.strip() for label in clause.split(",")} - {"le"}
            assert kept == level, f"{rule['record']}: by ({clause}) but level {sorted(level)}"


@pytest.mark.parametrize("path", prom.RULE_FILES, ids=lambda p: p.name)
def test_rule_expressions_use_only_known_metrics(path: Path) -> None:
    allowed = allowed_names()
    for rule in rules(path):
        unknown = prom.metric_names(rule["expr"]) - allowed
        assert unknown == set(), f"{rule.get('record') or rule.get('alert')}: {unknown}"


def test_rule_selectors_use_catalog_label_values() -> None:
    """Matchers on enum-like labels name values the toolkit emits (status, outcome, type)."""
    emitted = {"status": {"ok", "error", "cancelled"},  # provider_requests_total
               "outcome": {"completed", "client_disconnect", "error", "cancelled"},
               "type": {"input", "output", "cached_input", "cache_write", "reasoning"},
               "reason": {"no_price", "no_usage", "cancelled", "error"}}
    for path in prom.RULE_FILES:
        for rule in rules(path):
            for name, matcher in prom.selectors(rule["expr"]):
                for label, value in re.findall(r'(\w+)\s*[=!]~?\s*"([^"]*)"', matcher):
                    if label in emitted and name.startswith(("provider_", "sse_", "endpoint")):
                        for one in value.split("|"):
                            assert one in emitted[label], f"{name}: {label}={value!r}"
                    spec = BY_NAME.get(name)
                    if spec is not None:
                        assert label in spec.labels, f"{name} has no label {label}"


def test_metric_names_ignores_functions_labels_and_numbers() -> None:
    expr = ('histogram_quantile(0.95, sum by (route, le) (rate(foo_bucket{route=~"$route", '
            'le!="1e3"}[$__rate_interval]))) > 2 * bar:baz:p95_1d offset 1h or vector(0) '
            'and on (job) up unless max_over_time(qux[5m:1m]) > 1e-3')
    assert prom.metric_names(expr) == {"foo_bucket", "bar:baz:p95_1d", "up", "qux"}
    assert prom.selectors('rate(a_total{x="{y}"}[5m]) / b') == [("a_total", '{x="{y}"}'),
                                                                 ("b", "")]


# --------------------------------------------------------------------------- live


@pytest.mark.prometheus
@pytest.mark.slow
def test_rules_evaluate_without_errors_on_catalog_data(live: Any) -> None:
    """Every rule evaluates cleanly on real series (no many-to-many or type errors)."""
    deadline = time.monotonic() + 20
    while True:
        groups = live.prom.rules()
        loaded = [rule for group in groups for rule in group["rules"]]
        # An unevaluated rule reports Go's zero time.
        evaluated = [r for r in loaded if not r["lastEvaluation"].startswith("0001-")]
        if len(evaluated) == len(loaded) and loaded:
            break
        assert time.monotonic() < deadline, f"rules not evaluated: {groups}"
        time.sleep(0.5)
    assert len(loaded) == sum(len(rules(path)) for path in prom.RULE_FILES)
    broken = {r["name"]: r.get("lastError") for r in loaded if r["health"] != "ok"}
    assert broken == {}
    # The ratios and quantiles produce series for the fake app's labels.
    for name in ("route:http_errors:ratio_rate5m", "route:http_request_duration_seconds:p95_5m",
                 "provider_model:provider_errors:ratio_rate5m",
                 "endpoint:sse_client_disconnects:ratio_rate5m", "provider:cost_usd:rate1h",
                 "cache:cache_lookups:hit_ratio_rate5m"):
        deadline = time.monotonic() + 10
        while not live.prom.query(name):
            assert time.monotonic() < deadline, f"{name} has no series"
            time.sleep(0.5)
