"""instrument.slo: the spec's refusals, the rules it generates, and the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from instrument.slo import SpecError, load_spec, parse_spec, render_rules, rule_groups
from instrument.slo.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

CHAT = {"name": "chat", "metric": "http_requests_total", "match": {"route": "/chat"},
        "objective": 0.995}
TTFT = {"name": "ttft", "metric": "provider_time_to_first_token_seconds",
        "match": {"provider": "openai", "model": "gpt-4o-mini"}, "threshold": 1.28,
        "objective": 0.95}


def spec(**top: Any) -> dict[str, Any]:
    return {"slos": [CHAT], **top}


def slo(**entry: Any) -> dict[str, Any]:
    return {"slos": [{**CHAT, **entry}]}


def refused(data: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


def rules_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rule_groups(parse_spec(data)) for rule in group["rules"]]


# --------------------------------------------------------------------------- refusals


def test_a_metric_the_toolkit_does_not_emit_is_refused_with_the_usable_ones() -> None:
    message = refused(slo(metric="http_request_total"))
    assert "slo 'chat': metric 'http_request_total' is not one the toolkit emits" in message
    assert "http_requests_total" in message and "provider_time_to_first_token_seconds" in message


def test_an_objective_without_a_metric_is_told_to_name_one() -> None:
    entry = {k: v for k, v in CHAT.items() if k != "metric"}
    message = refused({"slos": [entry]})
    assert "slo 'chat': no metric: add `metric:` naming one of http_requests_total" in message


def test_a_catalog_metric_without_a_good_bad_split_is_refused() -> None:
    assert "cache_hits_total has no good/bad split" in refused(slo(metric="cache_hits_total"))


def test_a_threshold_between_buckets_is_refused_naming_its_neighbours() -> None:
    message = refused({"slos": [{**TTFT, "threshold": 1.5}]})
    assert "threshold 1.5 s is not a bucket boundary of provider_time_to_first_token_seconds" \
        in message
    assert "between the boundaries 1.28 and 2.56" in message
    assert "0.64, 1.28, 2.56" in message  # the boundaries to choose from


def test_a_threshold_outside_the_buckets_is_refused() -> None:
    assert "outside the buckets" in refused({"slos": [{**TTFT, "threshold": 1000}]})


def test_a_latency_slo_needs_a_threshold_and_a_counter_takes_none() -> None:
    no_threshold = {k: v for k, v in TTFT.items() if k != "threshold"}
    assert "needs a threshold in seconds" in refused({"slos": [no_threshold]})
    assert "threshold applies to histograms" in refused(slo(threshold=1.0))


@pytest.mark.parametrize("objective", [0, 1, 1.5, -0.1, 99.5, "0.99", True, None])
def test_an_objective_outside_zero_one_is_refused(objective: Any) -> None:
    assert "strictly between 0 and 1 (write 0.995 for 99.5 %)" in refused(slo(objective=objective))


@pytest.mark.parametrize(("data", "where"), [
    ({"slos": [CHAT], "slo": []}, "the spec: unknown key 'slo'"),
    (slo(objectve=0.9), "slos[0]: unknown key 'objectve'"),
    ({"budgets": [{"name": "b", "provider": "openai", "period": "daily", "usd": 1,
                   "currency": "EUR"}]}, "budgets[0]: unknown key 'currency'"),
    (spec(unpriced={"max_share": 0.1, "window": "1h"}), "unpriced: unknown key 'window'"),
])
def test_unknown_keys_are_refused_listing_the_known_ones(data: Any, where: str) -> None:
    message = refused(data)
    assert where in message and "the keys are" in message


def test_a_match_on_a_label_the_metric_lacks_is_refused() -> None:
    message = refused(slo(match={"endpoint": "/chat"}))
    assert "http_requests_total has no label 'endpoint'" in message
    assert "its labels are method, route" in message
    assert "no label 'status'" in refused(slo(match={"status": "200"}))


@pytest.mark.parametrize(("good", "fix"), [
    (["completed", "finished"], "good must list distinct outcomes"),
    (["completed", "client_disconnect", "error", "cancelled"], "nothing can burn"),
])
def test_stream_outcomes_are_checked(good: list[str], fix: str) -> None:
    stream = {"name": "s", "metric": "sse_streams_closed_total", "good": good,
              "objective": 0.99}
    assert fix in refused({"slos": [stream]})
    assert "apply to sse_streams_closed_total only" in refused(slo(good=["completed"]))


@pytest.mark.parametrize(("budget", "fix"), [
    ({"period": "weekly", "usd": 5}, "period 'weekly' must be one of daily, monthly"),
    ({"period": "daily", "usd": 0}, "usd must be a positive number"),
    ({"period": "daily", "usd": 5, "provider": ""}, "provider is required"),
])
def test_budgets_are_checked(budget: dict[str, Any], fix: str) -> None:
    assert fix in refused({"budgets": [{"name": "b", "provider": "openai", **budget}]})


@pytest.mark.parametrize(("data", "fix"), [
    ({}, "nothing to generate"),
    ([CHAT], "expected a mapping"),
    (spec(period="2w"), "period: '2w' is not a number of days from 7d to 90d"),
    (spec(period="3d"), "from 7d to 90d"),
    ({"slos": [CHAT, CHAT]}, "name 'chat' is used twice"),
    (slo(name="Chat SLO"), "lowercase letters"),
    (slo(description="{{ $labels.route }} works"), "description must be a string without {{"),
    (spec(unpriced={"max_share": 5}), "max_share 5 is not a share strictly between 0 and 1"),
    (spec(unpriced={"max_share": 0.1, "reasons": ["free"]}), "reasons must list some of"),
])
def test_other_mistakes_say_what_to_write(data: Any, fix: str) -> None:
    assert fix in refused(data)


# --------------------------------------------------------------------------- generation


def test_each_sli_counts_its_own_bad_events() -> None:
    def ratio5m(entry: dict[str, Any]) -> str:
        return next(r["expr"] for r in rules_of({"slos": [entry]})
                    if r.get("record") == "slo:sli_error:ratio_rate5m")

    assert 'rate(http_errors_total{route="/chat"}[5m])' in ratio5m(CHAT)
    provider = ratio5m({"name": "p", "metric": "provider_requests_total",
                        "match": {"provider": "openai"}, "objective": 0.99})
    assert 'provider_requests_total{provider="openai",status="error"}' in provider
    assert 'provider_requests_total{provider="openai",status!="cancelled"}' in provider
    stream = ratio5m({"name": "s", "metric": "sse_streams_closed_total",
                      "good": ["client_disconnect", "completed"], "objective": 0.99})
    assert 'sse_streams_closed_total{outcome!~"completed|client_disconnect"}' in stream
    latency = ratio5m(TTFT)
    assert 'provider_time_to_first_token_seconds_bucket{model="gpt-4o-mini",' \
           'provider="openai",le="1.28"}' in latency
    assert "provider_time_to_first_token_seconds_count{" in latency


def test_le_is_spelt_as_prometheus_client_exposes_it() -> None:
    """A whole-number boundary is exposed as "1.0": a matcher on "1" would select nothing."""
    http = {"name": "fast", "metric": "http_request_duration_seconds", "threshold": 1,
            "objective": 0.9}
    assert any('le="1.0"' in r.get("expr", "") for r in rules_of({"slos": [http]}))


def test_burn_factors_scale_with_the_period() -> None:
    """2 %, 5 % and 10 % of the budget in 1 h, 6 h and 3 d: 14.4x, 6x, 1x of 30 days."""
    def factors(period: str) -> list[str]:
        return [r["expr"].split(" > ")[-1] for r in rules_of(spec(period=period))
                if r.get("alert", "").startswith("SLOBurnRate")]

    assert factors("30d") == ["14.4", "6", "1"]
    assert factors("28d") == ["13.44", "5.6", "0.933333333333"]


def test_every_window_and_the_budget_are_recorded_per_slo() -> None:
    records = [r["record"] for r in rules_of(spec(period="28d"))
               if "record" in r]
    assert records == [f"slo:sli_error:ratio_rate{w}" for w in
                       ("5m", "30m", "1h", "6h", "3d", "28d")] + [
        "slo:objective:ratio", "slo:error_budget:remaining"]
    remaining = next(r for r in rules_of(spec()) if r.get("record") ==
                     "slo:error_budget:remaining")
    assert remaining["expr"] == '1 - slo:sli_error:ratio_rate30d{slo="chat"} / 0.005'
    assert remaining["labels"] == {"slo": "chat", "route": "/chat"}


def test_label_values_are_escaped_in_selectors() -> None:
    expr = rules_of(slo(match={"route": 'a"b\\c'}))[0]["expr"]
    assert 'route="a\\"b\\\\c"' in expr


def test_a_budget_without_a_model_adds_the_provider_s_api_fees() -> None:
    def spend(budget: dict[str, Any]) -> str:
        data = {"budgets": [{"name": "b", "provider": "openai", "period": "monthly", "usd": 9,
                             **budget}]}
        return str(next(r["expr"] for r in rules_of(data)
                        if r.get("record") == "budget:cost_usd:spend"))

    assert "api_cost_usd_total" in spend({}) and "[30d]" in spend({})
    assert "api_cost_usd_total" not in spend({"model": "gpt-4o"})


def test_rendered_rules_are_yaml_that_loads_back_to_the_groups() -> None:
    data = {**spec(dashboard_url="https://grafana.example/d/x?orgId=1"),
            "budgets": [{"name": "b", "provider": "openai", "period": "daily", "usd": 9}],
            "unpriced": {"max_share": 0.05}}
    parsed = parse_spec(data)
    text = render_rules(parsed, "mine.yml")
    assert text.startswith("# Generated by `python -m instrument.slo rules mine.yml`")
    assert yaml.safe_load(text) == {"groups": rule_groups(parsed)}
    assert "&id" not in text and "*id" not in text, "no YAML aliases in a rule file"
    assert "https://grafana.example/d/x?orgId=1&var-slo=chat" in text


# --------------------------------------------------------------------------- command line


def test_json_specs_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "slo.json"
    path.write_text(json.dumps(spec()))
    assert load_spec(path).objectives[0].name == "chat"


def test_the_command_refuses_a_bad_spec_with_exit_code_2(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    path = tmp_path / "slo.yml"
    path.write_text(yaml.safe_dump(slo(metric="nope_total")))
    assert main(["rules", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: slo 'chat': metric 'nope_total' is not one")
    path.write_text("slos: [\n")
    assert main(["rules", str(path)]) == 2
    assert "not valid YAML or JSON" in capsys.readouterr().err
    assert main(["rules", str(tmp_path / "missing.yml")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_the_command_writes_the_rules_to_a_file(tmp_path: Path) -> None:
    source, out = tmp_path / "slo.yml", tmp_path / "rules.yml"
    source.write_text(yaml.safe_dump(spec()))
    assert main(["rules", str(source), "-o", str(out)]) == 0
    assert out.read_text() == render_rules(load_spec(source), str(source))


def test_without_pyyaml_the_command_names_the_extra(tmp_path: Path) -> None:
    """PyYAML is not a core dependency: the error says which extra brings it."""
    path = tmp_path / "slo.json"
    path.write_text(json.dumps(spec()))
    code = ("import sys; sys.modules['yaml'] = None\n"
            "from instrument.slo.__main__ import main\n"
            f"sys.exit(main(['rules', {str(path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "pip install 'llm-instrument[slo]'" in result.stderr


def test_the_slo_package_is_not_imported_by_instrument() -> None:
    code = "import sys, instrument; print('instrument.slo' in sys.modules, 'yaml' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, cwd=ROOT)
    assert result.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- docs/slo.md

DOC = ROOT / "docs" / "slo.md"


def test_the_doc_shows_the_shipped_spec() -> None:
    block = DOC.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == (ROOT / "monitoring" / "slo.yml").read_text()


def test_the_doc_lists_every_histogram_s_buckets() -> None:
    from instrument._catalog import CATALOG

    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d., ]+) \|$", DOC.read_text(), re.M))
    assert rows == {spec.name: ", ".join(f"{b:g}" for b in spec.buckets)
                    for spec in CATALOG if spec.kind == "histogram"}


def test_the_doc_s_refusal_is_the_one_the_command_prints(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    shipped = yaml.safe_load((ROOT / "monitoring" / "slo.yml").read_text())
    shipped["slos"][1]["threshold"] = 1.5
    path = tmp_path / "slo.yml"
    path.write_text(yaml.safe_dump(shipped))
    assert main(["rules", str(path)]) == 2
    printed = capsys.readouterr().err.replace(str(path), "slo.yml").strip()
    assert f"$ python -m instrument.slo rules slo.yml\n{printed}\n" in DOC.read_text()
