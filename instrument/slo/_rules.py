"""Prometheus rules from a checked :class:`Spec`: SLI error ratios, burn-rate alerts, budgets.

The burn-rate alerts follow the multiwindow, multi-burn-rate method of Google's
SRE workbook: an alert fires while the error ratio is too high over a long
window *and* over a short one (a twelfth of it), so it fires fast on a big burn
and stops soon after the burn does. Each pair's burn-rate factor is the share
of the period's error budget that the long window may spend, times the period
over the long window: 2 % in 1 h of 30 d is 14.4x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instrument.slo._spec import Budget, Objective, Spec, Unpriced

Rule = dict[str, Any]
Group = dict[str, Any]


@dataclass(frozen=True)
class Burn:
    """One long/short window pair: fire when both burn faster than ``factor(period)``."""

    long: str
    short: str
    long_hours: float
    budget_share: float

    def factor(self, period_days: int) -> float:
        return self.budget_share * period_days * 24 / self.long_hours


#: Pages: 2 % of the budget in an hour, 5 % in six hours. Ticket: 10 % in three days.
PAGE = (Burn("1h", "5m", 1, 0.02), Burn("6h", "30m", 6, 0.05))
TICKET = (Burn("3d", "6h", 72, 0.10),)
PAGE_FOR, TICKET_FOR = "2m", "15m"
#: Budget projections: fit the trailing spend over the first window, look the second ahead.
PROJECTION = {"1d": ("3h", "6h"), "30d": ("1d", "7d")}
PROJECTION_FOR, UNPRICED_FOR = "30m", "15m"
UNPRICED_WINDOW = "1h"


def rule_groups(spec: Spec) -> list[Group]:
    """Every rule group for ``spec``: one per SLO, then budgets, then the unpriced share."""
    groups = [_slo_group(o, spec) for o in spec.objectives]
    if spec.budgets:
        groups.append({"name": "slo-cost-budgets",
                       "rules": [r for b in spec.budgets for r in _budget_rules(b, spec)]})
    if spec.unpriced is not None:
        groups.append({"name": "slo-unpriced", "rules": _unpriced_rules(spec.unpriced, spec)})
    return groups


def windows(spec: Spec) -> tuple[str, ...]:
    """The error-ratio windows every SLO records, shortest first."""
    pairs = [w for burn in (*PAGE, *TICKET) for w in (burn.short, burn.long)]
    return (*dict.fromkeys(sorted(pairs, key=_seconds)), spec.period)


# --------------------------------------------------------------------------- SLOs


def _slo_group(o: Objective, spec: Spec) -> Group:
    labels = {"slo": o.name, **dict(o.match)}
    budget = num(1 - o.objective)
    rules: list[Rule] = [
        {"record": f"slo:sli_error:ratio_rate{w}", "expr": error_ratio(o, w), "labels": labels}
        for w in windows(spec)
    ]
    rules.append({"record": "slo:objective:ratio", "expr": f"vector({num(o.objective)})",
                  "labels": labels})
    rules.append({"record": "slo:error_budget:remaining",
                  "expr": f'1 - slo:sli_error:ratio_rate{spec.period}{{slo="{o.name}"}} / {budget}',
                  "labels": labels})
    rules += [_burn_alert(o, spec, b, "SLOBurnRatePage", "critical", PAGE_FOR) for b in PAGE]
    rules += [_burn_alert(o, spec, b, "SLOBurnRateTicket", "warning", TICKET_FOR)
              for b in TICKET]
    return {"name": f"slo-{o.name}", "rules": rules}


def error_ratio(o: Objective, window: str) -> str:
    """The share of bad events of the SLI over ``window``; no value without events."""
    match = dict(o.match)
    if o.metric.kind == "histogram":
        total = f"sum(rate({selector(o.metric.name + '_count', match)}[{window}]))"
        good = f"sum(rate({selector(o.metric.name + '_bucket', match, le=o.le)}[{window}]))"
        return f"({total} - {good})\n/ ({total} > 0)"
    if o.metric.name == "http_requests_total":
        bad_metric, bad, total_matchers = "http_errors_total", {}, {}
    elif o.metric.name == "provider_requests_total":
        # A call the caller cancelled is neither good nor bad.
        bad_metric, bad = o.metric.name, {"status": "error"}
        total_matchers = {"status!": "cancelled"}
    else:
        bad_metric, bad, total_matchers = o.metric.name, {"outcome!~": "|".join(o.good)}, {}
    total = f"sum(rate({selector(o.metric.name, match, **total_matchers)}[{window}]))"
    bad_rate = f"sum(rate({selector(bad_metric, match, **bad)}[{window}]))"
    # A window with traffic and no bad series yet is 0, a window without traffic has no value.
    return f"({bad_rate} or {total} * 0)\n/ ({total} > 0)"


def _burn_alert(o: Objective, spec: Spec, burn: Burn, alert: str, severity: str,
                for_: str) -> Rule:
    """One alert per window pair, so that its text can say which windows burn."""
    budget = num(1 - o.objective)
    factor = num(burn.factor(spec.period_days))
    sel = f'{{slo="{o.name}"}}'
    how = f"{factor}x over {burn.long} and {burn.short}"
    speed = "fast" if severity == "critical" else "steadily"
    return {
        "alert": alert,
        "expr": (f"slo:sli_error:ratio_rate{burn.long}{sel} / {budget} > {factor}\n"
                 f"and slo:sli_error:ratio_rate{burn.short}{sel} / {budget} > {factor}"),
        "for": for_,
        # The slo and window labels keep promtool from seeing one alert twice.
        "labels": {"severity": severity, "slo": o.name, "window": burn.long},
        "annotations": {
            "summary": f"SLO {o.name} is burning its error budget {speed}",
            "description": (
                f"{o.description}. Over the last {burn.long} its errors spend the "
                f"{spec.period} error budget {{{{ $value | printf \"%.1f\" }}}}x as fast as "
                f"the budget allows, and over the last {burn.short} too (this alert fires "
                f"above {how})."),
            "slo": o.name,
            "burn_rate": how,
            "dashboard": dashboard_link(spec, "slo", o.name),
        },
    }


# --------------------------------------------------------------------------- cost


def _budget_rules(b: Budget, spec: Spec) -> list[Rule]:
    labels = {"budget": b.name, "provider": b.provider, "period": b.period}
    if b.model is not None:
        labels["model"] = b.model
    sel = f'{{budget="{b.name}"}}'
    fit, ahead = PROJECTION[b.period]
    usd = num(b.usd)
    what = f"{b.provider} {b.model}" if b.model else f"{b.provider} (all models and API fees)"
    link = dashboard_link(spec, "provider", b.provider)
    return [
        {"record": "budget:cost_usd:spend", "expr": spend(b), "labels": labels},
        {"record": "budget:cost_usd:limit", "expr": f"vector({usd})", "labels": labels},
        {"record": "budget:cost_usd:projected",
         "expr": f"predict_linear(budget:cost_usd:spend{sel}[{fit}], {_seconds(ahead)})",
         "labels": labels},
        {"alert": "CostBudgetExceeded",
         "expr": f"budget:cost_usd:spend{sel} > {usd}",
         "for": "0m",
         "labels": {"severity": "critical", "budget": b.name},
         "annotations": {
             "summary": f"Budget {b.name} is spent: {what}",
             "description": (f"{what} cost {{{{ $value | printf \"%.2f\" }}}} USD over the "
                             f"last {b.period}, over its budget of {usd} USD."),
             "budget": b.name,
             "dashboard": link,
         }},
        {"alert": "CostBudgetProjectedOverrun",
         "expr": f"budget:cost_usd:projected{sel} > {usd}\nand budget:cost_usd:spend{sel} <= {usd}",
         "for": PROJECTION_FOR,
         "labels": {"severity": "warning", "budget": b.name},
         "annotations": {
             "summary": f"Budget {b.name} will be overspent at this trend: {what}",
             "description": (f"At the trend of the last {fit}, the spend of {what} over a "
                             f"trailing {b.period} reaches {{{{ $value | printf \"%.2f\" }}}} "
                             f"USD within {ahead}, over its budget of {usd} USD."),
             "budget": b.name,
             "dashboard": link,
         }},
    ]


def spend(b: Budget) -> str:
    """USD spent over the budget's trailing period: tokens, plus API fees for a whole provider."""
    match = {"provider": b.provider}
    if b.model is not None:
        match["model"] = b.model
    parts = [f"sum(increase({selector('token_cost_usd_total', match)}[{b.period}]))"]
    if b.model is None:  # API fees carry no model label
        parts.append(f"sum(increase({selector('api_cost_usd_total', match)}[{b.period}]))")
    return "\n+ ".join(f"({p} or vector(0))" for p in parts)


def _unpriced_rules(u: Unpriced, spec: Spec) -> list[Rule]:
    w = UNPRICED_WINDOW
    by = "sum by (provider, model)"
    reasons = {"reason=~": "|".join(u.reasons)}
    unpriced = f"{by} (rate({selector('provider_unpriced_requests_total', {}, **reasons)}[{w}]))"
    calls = f"{by} (rate(provider_requests_total[{w}]))"
    record = f"provider_model:provider_unpriced_requests:ratio_rate{w}"
    return [
        {"record": record, "expr": f"({unpriced} or {calls} * 0)\n/ ({calls} > 0)"},
        {"alert": "UnpricedShareHigh",
         "expr": f"{record} > {num(u.max_share)}",
         "for": UNPRICED_FOR,
         "labels": {"severity": "warning"},
         "annotations": {
             "summary": "Many calls to {{ $labels.provider }} {{ $labels.model }} have no cost",
             "description": (
                 "{{ $value | humanizePercentage }} of the calls to {{ $labels.provider }} "
                 f"model {{{{ $labels.model }}}} over the last {w} have no known cost "
                 f"(reasons {', '.join(u.reasons)}; the limit is "
                 f"{num(u.max_share * 100)} %), so spend and budgets read low."),
             "dashboard": dashboard_link(spec, "provider", "{{ $labels.provider }}"),
         }},
    ]


# --------------------------------------------------------------------------- PromQL text


def selector(name: str, match: dict[str, str], **extra: str) -> str:
    """``name{label="value",...}``; an ``extra`` key may end in the operator (``status!``)."""
    matchers = [f'{k}="{_escape(v)}"' for k, v in match.items()]
    for key, value in extra.items():
        label = key.rstrip("!=~")
        op = key[len(label):] or "="
        op = op if op in ("=", "!=", "=~", "!~") else op + "="
        matchers.append(f'{label}{op}"{_escape(value)}"')
    return f"{name}{{{','.join(matchers)}}}" if matchers else name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def num(value: float) -> str:
    """A number as PromQL and alert texts show it: 0.005, 14.4, 50 (no float noise)."""
    return f"{value:.12g}"


def dashboard_link(spec: Spec, variable: str, value: str) -> str:
    sep = "&" if "?" in spec.dashboard_url else "?"
    return f"{spec.dashboard_url}{sep}var-{variable}={value}"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * _UNITS[duration[-1]]
