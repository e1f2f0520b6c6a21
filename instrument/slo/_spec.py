"""The SLO spec: what a user writes, checked against the metric catalog before any rule exists.

Every refusal is a :class:`SpecError` whose message names the entry, the key and
what to write instead, so a bad spec fails at generation time rather than as
an alert that never fires.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.utils import floatToGoString

from instrument._catalog import BY_NAME, MetricSpec


class SpecError(ValueError):
    """The spec cannot be turned into rules; the message says what to fix."""


#: Counter SLIs: the metric a spec names, and which of its series are bad.
#: Latency SLIs take any catalog histogram instead.
RATIO_METRICS = ("http_requests_total", "provider_requests_total", "sse_streams_closed_total")
#: Outcomes of a closed SSE stream, as the toolkit labels them.
SSE_OUTCOMES = ("completed", "client_disconnect", "error", "cancelled")
#: Why a provider call is unpriced, as the toolkit labels it.
UNPRICED_REASONS = ("no_price", "no_usage", "cancelled", "error")
#: Budget periods: the trailing window that is summed.
BUDGET_PERIODS = {"daily": "1d", "monthly": "30d"}

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_DAYS = re.compile(r"([1-9][0-9]*)d")
#: The ticket's long window is 3 days: a shorter SLO period makes no sense of it.
MIN_PERIOD_DAYS, MAX_PERIOD_DAYS = 7, 90

_TOP_KEYS = {"dashboard_url", "period", "slos", "budgets", "unpriced"}
_SLO_KEYS = {"name", "description", "metric", "match", "objective", "threshold", "good"}
_BUDGET_KEYS = {"name", "provider", "model", "period", "usd"}
_UNPRICED_KEYS = {"max_share", "reasons"}
DEFAULT_DASHBOARD = "http://localhost:3000/d/llm-instrument-overview"


@dataclass(frozen=True)
class Objective:
    """One SLO: the share of good events of ``metric`` (matching ``match``) over the period."""

    name: str
    description: str
    metric: MetricSpec
    match: tuple[tuple[str, str], ...]
    objective: float
    #: latency SLOs: the bucket boundary (seconds) a good event is at or under
    threshold: float | None = None
    #: SSE SLOs: the outcomes that count as good
    good: tuple[str, ...] = ()

    @property
    def le(self) -> str:
        """The ``le`` label of the threshold's bucket, spelt as prometheus-client spells it."""
        assert self.threshold is not None
        # prometheus-client ships no annotations for this helper
        return str(floatToGoString(self.threshold))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Budget:
    """Spend of one provider (or one of its models) over a trailing day or month."""

    name: str
    provider: str
    model: str | None
    period: str  # "1d" or "30d"
    usd: float


@dataclass(frozen=True)
class Unpriced:
    """Alert when more than ``max_share`` of a model's calls have no known cost."""

    max_share: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    dashboard_url: str
    period_days: int
    objectives: tuple[Objective, ...]
    budgets: tuple[Budget, ...]
    unpriced: Unpriced | None

    @property
    def period(self) -> str:
        return f"{self.period_days}d"


def parse_spec(data: Any) -> Spec:
    """Check a loaded spec (the YAML or JSON document as Python data) and build a :class:`Spec`."""
    top = _mapping(data, "the spec", _TOP_KEYS)
    period = top.get("period", "30d")
    days = _DAYS.fullmatch(str(period))
    if not days or not MIN_PERIOD_DAYS <= int(days.group(1)) <= MAX_PERIOD_DAYS:
        raise SpecError(f"period: {period!r} is not a number of days from "
                        f"{MIN_PERIOD_DAYS}d to {MAX_PERIOD_DAYS}d (write e.g. 30d or 28d)")
    url = top.get("dashboard_url", DEFAULT_DASHBOARD)
    if not isinstance(url, str) or not url:
        raise SpecError("dashboard_url: write the URL of the Grafana dashboard, as a string")
    objectives = tuple(_objective(entry, i) for i, entry in enumerate(_list(top, "slos")))
    budgets = tuple(_budget(entry, i) for i, entry in enumerate(_list(top, "budgets")))
    if not objectives and not budgets:
        raise SpecError("the spec has neither `slos` nor `budgets`: nothing to generate")
    _unique([o.name for o in objectives] + [b.name for b in budgets])
    unpriced = _unpriced(top["unpriced"]) if "unpriced" in top else None
    return Spec(url, int(days.group(1)), objectives, budgets, unpriced)


# --------------------------------------------------------------------------- entries


def _objective(entry: Any, index: int) -> Objective:
    where = f"slos[{index}]"
    raw = _mapping(entry, where, _SLO_KEYS)
    name = _name(raw, where)
    where = f"slo {name!r}"
    metric = _metric(raw, where)
    match = _match(raw.get("match", {}), metric, where)
    objective = raw.get("objective")
    if (not isinstance(objective, (int, float)) or isinstance(objective, bool)
            or not 0 < objective < 1):
        raise SpecError(f"{where}: objective {objective!r} is not a share strictly between 0 "
                        "and 1 (write 0.995 for 99.5 %)")
    description = raw.get("description", f"{_percent(objective)} of {metric.name} good")
    if not isinstance(description, str) or "{{" in description:
        # The alerts quote it, and Prometheus would run {{ ... }} as a template.
        raise SpecError(f"{where}: description must be a string without {{{{ }}}}")
    threshold = _threshold(raw, metric, where)
    good = _good(raw, metric, where)
    return Objective(name, description, metric, match, float(objective), threshold, good)


def _metric(raw: Mapping[str, Any], where: str) -> MetricSpec:
    name = raw.get("metric")
    usable = ", ".join((*RATIO_METRICS, "or any histogram: " + ", ".join(
        spec.name for spec in BY_NAME.values() if spec.kind == "histogram")))
    if name is None:
        raise SpecError(f"{where}: no metric: add `metric:` naming one of {usable}")
    spec = BY_NAME.get(name) if isinstance(name, str) else None
    if spec is None:
        raise SpecError(f"{where}: metric {name!r} is not one the toolkit emits "
                        f"(instrument/_catalog.py); use {usable}")
    if spec.kind != "histogram" and spec.name not in RATIO_METRICS:
        raise SpecError(f"{where}: {spec.name} has no good/bad split for an SLO; use {usable}")
    return spec


def _match(raw: Any, metric: MetricSpec, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: match must map label names to values, e.g. {{route: /chat}}")
    # The SLI's own good/bad labels are the generator's to set, not the spec's.
    allowed = [label for label in metric.labels if label not in ("status", "outcome")]
    for label, value in raw.items():
        if label not in allowed:
            raise SpecError(f"{where}: {metric.name} has no label {label!r} to match; "
                            f"its labels are {', '.join(allowed) or 'none'}")
        if not isinstance(value, str) or not value:
            raise SpecError(f"{where}: match {label} needs a non-empty string value")
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def _threshold(raw: Mapping[str, Any], metric: MetricSpec, where: str) -> float | None:
    threshold = raw.get("threshold")
    if metric.kind != "histogram":
        if threshold is not None:
            raise SpecError(f"{where}: threshold applies to histograms; {metric.name} "
                            "is a counter")
        return None
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise SpecError(f"{where}: a latency SLO on {metric.name} needs a threshold in "
                        f"seconds, one of its bucket boundaries: {_listing(metric.buckets)}")
    if float(threshold) not in metric.buckets:
        below = [b for b in metric.buckets if b < threshold]
        above = [b for b in metric.buckets if b > threshold]
        between = (f"it lies between the boundaries {below[-1]:g} and {above[0]:g}"
                   if below and above else "it lies outside the buckets")
        raise SpecError(f"{where}: threshold {threshold:g} s is not a bucket boundary of "
                        f"{metric.name}, so the share under it could only be interpolated; "
                        f"{between}. Use one of {_listing(metric.buckets)}")
    return float(threshold)


def _good(raw: Mapping[str, Any], metric: MetricSpec, where: str) -> tuple[str, ...]:
    if metric.name != "sse_streams_closed_total":
        if "good" in raw:
            raise SpecError(f"{where}: good outcomes apply to sse_streams_closed_total only")
        return ()
    good = raw.get("good", ["completed", "client_disconnect"])
    if (not isinstance(good, list) or not good
            or any(g not in SSE_OUTCOMES for g in good) or len(set(good)) != len(good)):
        raise SpecError(f"{where}: good must list distinct outcomes of "
                        f"{_listing(SSE_OUTCOMES)}, got {good!r}")
    if set(good) == set(SSE_OUTCOMES):
        raise SpecError(f"{where}: every outcome is good, so nothing can burn the budget")
    return tuple(g for g in SSE_OUTCOMES if g in good)


def _budget(entry: Any, index: int) -> Budget:
    where = f"budgets[{index}]"
    raw = _mapping(entry, where, _BUDGET_KEYS)
    name = _name(raw, where)
    where = f"budget {name!r}"
    provider, model = raw.get("provider"), raw.get("model")
    if not isinstance(provider, str) or not provider:
        raise SpecError(f"{where}: provider is required (the provider label, e.g. openai)")
    if model is not None and (not isinstance(model, str) or not model):
        raise SpecError(f"{where}: model must be a model name; leave it out for every model")
    period = raw.get("period")
    if period not in BUDGET_PERIODS:
        raise SpecError(f"{where}: period {period!r} must be one of "
                        f"{_listing(BUDGET_PERIODS)}")
    usd = raw.get("usd")
    if not isinstance(usd, (int, float)) or isinstance(usd, bool) or not 0 < usd < math.inf:
        raise SpecError(f"{where}: usd must be a positive number of US dollars")
    return Budget(name, provider, model, BUDGET_PERIODS[period], float(usd))


def _unpriced(entry: Any) -> Unpriced:
    raw = _mapping(entry, "unpriced", _UNPRICED_KEYS)
    share = raw.get("max_share")
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
        raise SpecError(f"unpriced: max_share {share!r} is not a share strictly between 0 "
                        "and 1 (write 0.05 for 5 % of calls)")
    reasons = raw.get("reasons", list(UNPRICED_REASONS))
    if (not isinstance(reasons, list) or not reasons
            or any(r not in UNPRICED_REASONS for r in reasons)):
        raise SpecError(f"unpriced: reasons must list some of {_listing(UNPRICED_REASONS)}, "
                        f"got {reasons!r}")
    return Unpriced(float(share), tuple(r for r in UNPRICED_REASONS if r in reasons))


# --------------------------------------------------------------------------- helpers


def _mapping(value: Any, where: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: expected a mapping of keys, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in keys)
    if unknown:
        raise SpecError(f"{where}: unknown key {', '.join(map(repr, unknown))}; "
                        f"the keys are {_listing(sorted(keys))}")
    return value


def _list(top: Mapping[str, Any], key: str) -> list[Any]:
    value = top.get(key, [])
    if not isinstance(value, list):
        raise SpecError(f"{key}: expected a list of entries")
    return value


def _name(raw: Mapping[str, Any], where: str) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(f"{where}: name {name!r} must be lowercase letters, digits, - and _ "
                        "(it becomes the slo or budget label)")
    return name


def _unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SpecError(f"name {name!r} is used twice; every slo and budget needs its own")
        seen.add(name)


def _listing(values: Any) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _percent(share: float) -> str:
    return f"{share * 100:.12g} %"
