"""An offline linter for the Grafana dashboard, with the rules of grafana/dashboard-linter.

Each rule is a function from the dashboard to its problems, named after the
linter's rule. Two of the linter's rules are turned round on purpose: the
dashboard has no ``$job``/``$instance`` variables (its queries sum over every
instance of one app, as the recording rules do), so ``target-job-rule`` and
``target-instance-rule`` here forbid a hard-coded ``job``/``instance`` matcher
instead of demanding ``job=~"$job"``. ``target-promql-rule`` is promtool's job
(test_dashboard.py parses every query with it).

Use::

    problems = lint(load_dashboard(), units=known_units)   # [] when clean
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from typing import Any

from prom import iter_panels, selector_spans

from instrument._catalog import CATALOG

Dashboard = dict[str, Any]
Rule = Callable[[Dashboard], list[str]]

#: Units Grafana builds from a prefix rather than a list entry.
CUSTOM_UNIT_PREFIXES = ("suffix:", "prefix:", "si:", "count:", "currency:", "time:")
#: The series names of counters: they mean something only through rate() or increase().
COUNTER_SERIES = frozenset(
    [spec.name for spec in CATALOG if spec.kind == "counter"]
    + [spec.name + s for spec in CATALOG if spec.kind == "histogram"
       for s in ("_bucket", "_count", "_sum")])
_RANGE_FUNCTIONS = ("rate", "irate", "increase")


def panels(dashboard: Dashboard) -> Iterator[dict[str, Any]]:
    """Every panel that shows data: rows, and the panels nested in collapsed rows, walked."""
    return (p for p in iter_panels(dashboard["panels"]) if p.get("type") != "row")


def targets(dashboard: Dashboard) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield str(panel.get("title")), target


def datasource_variable(dashboard: Dashboard) -> str | None:
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "datasource" and var.get("query") == "prometheus":
            return str(var["name"])
    return None


# --------------------------------------------------------------------------- rules


def template_datasource_rule(dashboard: Dashboard) -> list[str]:
    """The dashboard has a Prometheus data source variable."""
    return [] if datasource_variable(dashboard) else ["no datasource variable for prometheus"]


def template_on_time_change_reload_rule(dashboard: Dashboard) -> list[str]:
    """Query variables refresh when the time range changes (refresh 2)."""
    return [f"variable {var['name']}: refresh {var.get('refresh')!r}, not 2"
            for var in dashboard["templating"]["list"]
            if var.get("type") == "query" and var.get("refresh") != 2]


def panel_datasource_rule(dashboard: Dashboard) -> list[str]:
    """Every panel and target reads the data source variable, never a fixed data source."""
    wanted = {"type": "prometheus", "uid": f"${{{datasource_variable(dashboard)}}}"}
    problems = [f"{p.get('title')}: datasource {p.get('datasource')}"
                for p in panels(dashboard) if p.get("datasource") != wanted]
    problems += [f"{title} {t.get('refId')}: datasource {t.get('datasource')}"
                 for title, t in targets(dashboard) if t.get("datasource") != wanted]
    return problems


def panel_title_description_rule(dashboard: Dashboard) -> list[str]:
    """Every panel has a title and a description; a row has a title."""
    problems = [f"row {p.get('id')}: no title" for p in iter_panels(dashboard["panels"])
                if p.get("type") == "row" and not p.get("title")]
    for panel in panels(dashboard):
        if not panel.get("title"):
            problems.append(f"panel {panel.get('id')}: no title")
        if not panel.get("description"):
            problems.append(f"{panel.get('title')}: no description")
    return problems


def panel_units_rule(dashboard: Dashboard, units: Collection[str] = ()) -> list[str]:
    """Every panel sets a unit; with ``units`` given, one of them or a custom one."""
    problems = []
    for panel in panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not unit:
            problems.append(f"{panel.get('title')}: no unit")
        elif units and unit not in units and not unit.startswith(CUSTOM_UNIT_PREFIXES):
            problems.append(f"{panel.get('title')}: unit {unit!r} is not one Grafana knows")
    return problems


def panel_no_targets_rule(dashboard: Dashboard) -> list[str]:
    return [f"{p.get('title')}: no targets" for p in panels(dashboard)
            if not [t for t in p.get("targets", []) if t.get("expr")]]


def target_rate_interval_rule(dashboard: Dashboard) -> list[str]:
    """rate() and irate() run over $__rate_interval; increase() only totals the selected
    range, over $__range."""
    problems = []
    for title, target in targets(dashboard):
        expr = target.get("expr", "")
        for func, window in re.findall(r"\b(rate|irate|increase)\(\s*[^()]*?\[([^\]]+)\]", expr):
            if window != ("$__range" if func == "increase" else "$__rate_interval"):
                problems.append(f"{title}: {func}(...[{window}])")
    return problems


def _hard_coded(label: str) -> Rule:
    def rule(dashboard: Dashboard) -> list[str]:
        problems = []
        for title, target in targets(dashboard):
            for name, _, start, end in selector_spans(target.get("expr", "")):
                matcher = target["expr"][start:end]
                for value in re.findall(rf'\b{label}\s*[=!]~?\s*"([^"]*)"', matcher):
                    if "$" not in value:
                        problems.append(f"{title}: {name} matches {label}={value!r}")
        return problems

    rule.__doc__ = f"No query fixes the {label} label: the dashboard works for any {label}."
    return rule


target_job_rule = _hard_coded("job")
target_instance_rule = _hard_coded("instance")


def target_counter_agg_rule(dashboard: Dashboard) -> list[str]:
    """A counter is read only through rate(), irate() or increase() over a range."""
    problems = []
    for title, target in targets(dashboard):
        expr = target.get("expr", "")
        for name, begin, _, end in selector_spans(expr):
            if name not in COUNTER_SERIES:
                continue
            inside = re.search(rf"\b({'|'.join(_RANGE_FUNCTIONS)})\(\s*$", expr[:begin])
            if not inside or not expr[end:].lstrip().startswith("["):
                problems.append(f"{title}: counter {name} outside rate()/increase()")
    return problems


RULES: dict[str, Rule] = {
    "template-datasource-rule": template_datasource_rule,
    "template-on-time-change-reload-rule": template_on_time_change_reload_rule,
    "panel-datasource-rule": panel_datasource_rule,
    "panel-title-description-rule": panel_title_description_rule,
    "panel-units-rule": panel_units_rule,
    "panel-no-targets-rule": panel_no_targets_rule,
    "target-rate-interval-rule": target_rate_interval_rule,
    "target-job-rule": target_job_rule,
    "target-instance-rule": target_instance_rule,
    "target-counter-agg-rule": target_counter_agg_rule,
}


def lint(dashboard: Dashboard, units: Collection[str] = ()) -> list[str]:
    """Every problem as ``"rule-name: where: what"``; ``units`` are the units Grafana knows."""
    problems = []
    for name, rule in RULES.items():
        found = panel_units_rule(dashboard, units) if rule is panel_units_rule else rule(dashboard)
        problems += [f"{name}: {problem}" for problem in found]
    return problems
