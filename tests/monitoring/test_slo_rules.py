"""The rules generated from monitoring/slo.yml: in step with the spec, checked, unit-tested."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import prom
import pytest
import yaml
from catalog_app import SELECTED

from instrument._catalog import CATALOG
from instrument.slo import load_spec, parse_spec, render_rules, rule_groups

SLO_TEST = Path(__file__).resolve().parent / "slo_test.yml"
SOURCE = "monitoring/slo.yml"  # how the header of the shipped rules names the spec


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def show(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


def generated_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(prom.SLO_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_shipped_rules_are_generated_from_the_shipped_spec() -> None:
    """Edit monitoring/slo.yml, then: python -m instrument.slo rules monitoring/slo.yml
    -o monitoring/prometheus/slo_rules.yml"""
    assert prom.SLO_RULES.read_text() == render_rules(load_spec(prom.SLO_SPEC), SOURCE)


def test_the_command_prints_the_shipped_rules() -> None:
    result = run([sys.executable, "-m", "instrument.slo", "rules", SOURCE], cwd=prom.REPO_ROOT)
    assert result.returncode == 0, show(result)
    assert result.stdout == prom.SLO_RULES.read_text()


@pytest.mark.prometheus
def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run([promtool, "test", "rules", str(SLO_TEST.relative_to(prom.REPO_ROOT))],
                 cwd=prom.REPO_ROOT)
    assert result.returncode == 0, show(result)
    assert "SUCCESS" in result.stdout, show(result)


@pytest.mark.prometheus
@pytest.mark.parametrize(("change", "alert"), [
    # a page that waits for the slower pair only
    (("> 14.4", "> 144"), "SLOBurnRatePage"),
    # a ticket without its short window's reset
    (("and slo:sli_error:ratio_rate6h", "or slo:sli_error:ratio_rate6h"), "SLOBurnRateTicket"),
    # a latency SLI that counts the wrong bucket
    (('le="1.28"', 'le="0.64"'), "gpt-4o-mini-ttft"),
    # a projection that looks a day ahead rather than six hours
    (("[3h], 21600)", "[3h], 86400)"), "CostBudgetProjectedOverrun"),
    # the API fees left out of a whole provider's spend
    (('\n      + (sum(increase(api_cost_usd_total{provider="anthropic"}[30d])) or vector(0))',
      ""), "anthropic-monthly"),
], ids=["page-factor", "ticket-windows", "latency-bucket", "projection", "api-fees"])
def test_promtool_unit_tests_fail_when_the_rules_change(promtool: str, tmp_path: Path,
                                                        change: tuple[str, str],
                                                        alert: str) -> None:
    """The unit tests pin the generated rules: each of these changes makes them fail."""
    text = prom.SLO_RULES.read_text()
    broken = text.replace(*change)
    assert broken != text, change
    (tmp_path / "monitoring" / "prometheus").mkdir(parents=True)
    (tmp_path / "monitoring" / "prometheus" / "slo_rules.yml").write_text(broken)
    (tmp_path / "tests" / "monitoring").mkdir(parents=True)
    # Only the test groups about what changed: the others cost time and prove nothing here.
    tests = yaml.safe_load(SLO_TEST.read_text())
    tests["tests"] = [group for group in tests["tests"] if alert in yaml.safe_dump(group)]
    assert tests["tests"], alert
    (tmp_path / "tests" / "monitoring" / "slo_test.yml").write_text(yaml.safe_dump(tests))
    result = run([promtool, "test", "rules", "tests/monitoring/slo_test.yml"], cwd=tmp_path)
    assert result.returncode != 0, show(result)
    assert alert in result.stdout + result.stderr, show(result)


def test_every_generated_alert_is_shown_firing_and_quiet() -> None:
    fires: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for group in yaml.safe_load(SLO_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            for alert in case.get("exp_alerts", []):
                labels = alert["exp_labels"]
                fires.add((case["alertname"], labels.get("slo") or labels.get("budget", "")))
            if not case.get("exp_alerts"):
                quiet.add(case["alertname"])
    # Each SLO's page and ticket, each budget's overrun and projection, the unpriced share.
    wanted_fires = {(r["alert"], r["labels"].get("slo") or r["labels"].get("budget", ""))
                    for r in generated_rules() if "alert" in r}
    never_fired = wanted_fires - fires
    # One SLO and one budget per alert kind is enough to show the shared expression firing;
    # the others are the same text with another selector.
    assert {a for a, _ in wanted_fires} == {a for a, _ in fires}, never_fired
    assert {a for a, _ in wanted_fires} <= quiet


def test_alerts_name_the_slo_the_burn_rate_and_the_dashboard() -> None:
    spec = load_spec(prom.SLO_SPEC)
    for rule in generated_rules():
        if "alert" not in rule:
            continue
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"]
        assert notes["dashboard"].startswith(spec.dashboard_url + "?var-"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        if rule["alert"].startswith("SLOBurnRate"):
            assert notes["slo"] == rule["labels"]["slo"]
            assert notes["slo"] in notes["summary"]
            assert re.search(r"\d+(\.\d+)?x over \d+[mhd] and \d+[mhd]", notes["burn_rate"])
            assert "{{ $value" in notes["description"]


def test_generated_names_read_level_metric_operation() -> None:
    for rule in generated_rules():
        if "record" not in rule:
            continue
        level, metric, operation = rule["record"].split(":")
        kept = set(rule.get("labels", {}))
        for clause in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            kept |= {label.strip() for label in clause.split(",")}
        assert set(level.split("_")) <= kept, rule["record"]
        assert re.fullmatch(r"[a-z_]+", metric), rule["record"]
        assert re.fullmatch(r"ratio_rate\d+[mhd]|ratio|remaining|spend|limit|projected",
                            operation), rule["record"]


def test_the_burn_windows_and_factors_are_the_workbook_s() -> None:
    exprs = [r["expr"] for r in generated_rules()
             if r.get("alert", "").startswith("SLOBurnRate")
             and r["labels"]["slo"] == "chat-availability"]
    pairs = re.findall(r"ratio_rate(\w+)\{[^}]*\} / 0\.005 > ([\d.]+)", "\n".join(exprs))
    assert pairs == [("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6"),
                     ("3d", "1"), ("6h", "1")]



def every_sli_spec() -> dict[str, Any]:
    """One SLO of every kind the generator makes, on the catalog app's label values: each
    ratio metric, and each histogram at a boundary (a whole number where it has one: the
    spelling ``le="1.0"`` is the one to get right)."""
    slos: list[dict[str, Any]] = [
        {"name": "http", "metric": "http_requests_total", "match": {"route": SELECTED["route"]},
         "objective": 0.99},
        {"name": "provider", "metric": "provider_requests_total",
         "match": {"provider": SELECTED["provider"], "model": SELECTED["model"]},
         "objective": 0.99},
        {"name": "streams", "metric": "sse_streams_closed_total",
         "match": {"endpoint": SELECTED["endpoint"]}, "objective": 0.99},
    ]
    for spec in CATALOG:
        if spec.kind == "histogram":
            whole = [b for b in spec.buckets if b == int(b)]
            threshold = whole[0] if whole else spec.buckets[len(spec.buckets) // 2]
            slos.append({"name": spec.name.replace("_", "-"), "metric": spec.name,
                         "threshold": threshold, "objective": 0.9})
    return {"slos": slos,
            "budgets": [{"name": "whole", "provider": SELECTED["provider"], "period": "daily",
                         "usd": 1},
                        {"name": "model", "provider": SELECTED["provider"],
                         "model": SELECTED["model"], "period": "monthly", "usd": 1}],
            "unpriced": {"max_share": 0.1}}


@pytest.mark.prometheus
def test_rules_of_every_sli_kind_pass_promtool(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "every_sli.yml"
    path.write_text(render_rules(parse_spec(every_sli_spec())))
    result = run([promtool, "check", "rules", str(path)], cwd=tmp_path)
    assert result.returncode == 0, show(result)


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_sli_kind_reads_data_from_real_series(live: Any) -> None:
    """Each generated expression, run on the catalog app's scraped series, returns a number:
    the selectors, the le spelling and the ratios fit what prometheus-client exposes."""
    rules = [rule for group in rule_groups(parse_spec(every_sli_spec()))
             for rule in group["rules"] if "record" in rule]
    # The error ratios and the spend read raw series; the rest read recorded ones.
    raw = [r for r in rules if r["record"].startswith(("slo:sli_error:", "budget:cost_usd:spend",
                                                     "provider_model:"))]
    assert len(raw) >= 6 * 12
    deadline = time.monotonic() + 20  # rates need two scrapes in their window
    pending = raw
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if not has_number(live.prom.query(r["expr"]))]
        time.sleep(0.5)
    assert [(r["labels"].get("slo", r["record"]), r["expr"]) for r in pending] == []


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)
