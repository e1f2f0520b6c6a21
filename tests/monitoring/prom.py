"""Helpers for the monitoring tests: a throwaway Prometheus server and PromQL name checks.

``run_prometheus`` starts Debian's ``/usr/bin/prometheus`` on a free loopback
port against a generated config, and always stops it and deletes its data
directory. ``dashboard_queries`` turns the Grafana dashboard into plain PromQL
that such a server can run. ``metric_names`` finds the metric names an
expression reads, for lints against the catalog.

Typical end-to-end use::

    with run_prometheus(["127.0.0.1:8000"], [RECORDING_RULES, ALERTS]) as prom:
        prom.wait_for_scrapes(2, timeout=20)
        for title, expr in dashboard_queries(DASHBOARD, {"provider": "openai"}):
            prom.query(expr)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "monitoring"
DASHBOARD = MONITORING / "grafana_dashboard.json"
PROMETHEUS_DIR = MONITORING / "prometheus"
RECORDING_RULES = PROMETHEUS_DIR / "recording_rules.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
#: Generated from SLO_SPEC by ``python -m instrument.slo rules`` (test_slo_rules.py keeps it so).
SLO_RULES = PROMETHEUS_DIR / "slo_rules.yml"
SLO_SPEC = MONITORING / "slo.yml"
#: Every rule file prometheus.yml loads.
RULE_FILES = (RECORDING_RULES, ALERTS, SLO_RULES)
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"

PROMETHEUS_BIN = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
PROMTOOL_BIN = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")

#: Values for Grafana's built-in variables when a dashboard query runs outside Grafana.
#: ``$__rate_interval`` must span at least four scrapes of a fast test scrape interval.
GRAFANA_BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
#: The dashboard's own template variables default to "All" (the variables' allValue).
TEMPLATE_DEFAULTS: dict[str, str] = {
    "provider": ".*",
    "model": ".*",
    "route": ".*",
    "endpoint": ".*",
    "slo": ".*",
}


class PrometheusError(RuntimeError):
    """Prometheus failed to start, answered with an error, or did not scrape in time."""


# --------------------------------------------------------------------------- server


@dataclass
class PromHandle:
    """A running Prometheus: its base URL and small wrappers around the HTTP API."""

    url: str
    config_file: Path
    log_file: Path
    _process: subprocess.Popen[bytes] = field(repr=False)

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            # The API explains a bad query in a JSON body that comes with a 4xx status.
            with exc:
                text = exc.read().decode(errors="replace")
            raise PrometheusError(f"GET {path} {dict(params or {})}: HTTP {exc.code}: {text}") \
                from None
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path} {dict(params or {})}: {body}")
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """Run an instant query; the ``result`` list (vector samples), or raise with the error."""
        params = {"query": expr}
        if time is not None:
            params["time"] = repr(time)
        data = self._get("/api/v1/query", params)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """Exemplars of the series selected by ``expr`` between two Unix times."""
        params = {"query": expr, "start": repr(start), "end": repr(end)}
        return list(self._get("/api/v1/query_exemplars", params))

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health, last scrape and last error."""
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, each with its rules' health, state and last error."""
        return list(self._get("/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def wait_for_scrapes(self, n: int = 1, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped successfully ``n`` times since this call.

        Raises :class:`PrometheusError` with the targets' last errors on timeout.
        """
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            for target in targets:
                if target["health"] == "up":
                    seen.setdefault(target["scrapeUrl"], set()).add(target["lastScrape"])
            if targets and all(len(seen.get(t["scrapeUrl"], ())) >= n for t in targets):
                return
            time.sleep(0.2)
        state = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        raise PrometheusError(
            f"not {n} successful scrapes of every target within {timeout}s: {state}\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no prometheus log)"
        return "prometheus log:\n" + "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(path: Path, targets: list[str], rule_files: list[Path], scrape_interval: str,
                  job: str, metrics_path: str) -> None:
    # JSON is valid YAML, so no YAML library is needed to write the config.
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": [{
            "job_name": job,
            "metrics_path": metrics_path,
            "static_configs": [{"targets": list(targets)}],
        }],
    }
    path.write_text(json.dumps(config, indent=2))


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def run_prometheus(targets: list[str], rule_files: list[Path] | tuple[Path, ...] = (),
                   scrape_interval: str = "1s", *, job: str = "instrument-app",
                   metrics_path: str = "/metrics",
                   ready_timeout: float = 30.0) -> Iterator[PromHandle]:
    """Run Prometheus scraping ``targets`` ("host:port") with ``rule_files`` loaded.

    The server listens on a free 127.0.0.1 port with exemplar storage on and
    keeps its data in a temporary directory. On exit, normal or not, the
    process is terminated (killed after a timeout) and the directory removed.
    """
    binary = shutil.which(PROMETHEUS_BIN)
    if binary is None:
        raise PrometheusError(f"{PROMETHEUS_BIN} not found (Debian package 'prometheus')")
    workdir = Path(tempfile.mkdtemp(prefix="instrument-prom-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        config_file = workdir / "prometheus.yml"
        _write_config(config_file, targets, list(rule_files), scrape_interval, job, metrics_path)
        log_file = workdir / "prometheus.log"
        # Another process can take the port between free_port() and the bind: retry then.
        for _attempt in range(3):
            port = free_port()
            with log_file.open("wb") as log:
                process = subprocess.Popen(
                    [binary,
                     f"--config.file={config_file}",
                     f"--storage.tsdb.path={workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}",
                     "--enable-feature=exemplar-storage",
                     "--log.level=info"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=workdir,
                )
            handle = PromHandle(f"http://127.0.0.1:{port}", config_file, log_file, process)
            if _wait_ready(handle, process, ready_timeout):
                break
            _stop(process)
            if "address already in use" not in handle.log_tail():
                raise PrometheusError(f"prometheus did not become ready\n{handle.log_tail()}")
        else:
            raise PrometheusError(f"prometheus could not bind a port\n{handle.log_tail()}")
        yield handle
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(handle: PromHandle, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(handle.url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- dashboard


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables (``$x``, ``${x}``, ``[[x]]``) in ``expr``; unknown ones raise."""
    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        try:
            return values[name]
        except KeyError:
            raise KeyError(f"no value for ${name} in {expr!r}") from None

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(path: Path = DASHBOARD,
                      substitutions: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every panel target of the dashboard as ``(panel title, PromQL)``, variables filled in.

    ``substitutions`` overrides the defaults: each template variable is "All"
    (``.*``) and ``$__rate_interval``, ``$__interval``, ``$__range`` are
    :data:`GRAFANA_BUILTINS`. A variable with no value raises ``KeyError``.
    """
    values = {**GRAFANA_BUILTINS, **TEMPLATE_DEFAULTS, **dict(substitutions or {})}
    out = []
    for panel in iter_panels(load_dashboard(path)["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((str(panel["title"]), substitute(target["expr"], values)))
    return out


# --------------------------------------------------------------------------- PromQL names

#: PromQL functions, aggregations and keywords: identifiers that are not metric names.
PROMQL_WORDS = frozenset((
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week", "day_of_year",
    "days_in_month", "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "max_over_time", "min_over_time", "minute",
    "month", "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year", "acos",
    "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "deg", "pi", "rad", "sin",
    "sinh", "tan", "tanh", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2", "inf",
    "nan",
))

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_OFFSET = re.compile(r"\boffset\s+-?[\w$]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)",
                     re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(?<![\w:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^{}]*\})?")


def _strip(expr: str) -> str:
    """Blank out everything in ``expr`` that is not a function, keyword or metric name."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables outside strings
    return _NUMBER.sub(" ", text)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label names, functions and keywords excluded)."""
    return {word for word in _IDENT.findall(_strip(expr)) if word.lower() not in PROMQL_WORDS}


def selector_spans(expr: str) -> list[tuple[str, int, int, int]]:
    """Each vector selector in ``expr`` as ``(metric name, start, matcher start, end)``:
    ``expr[start:end]`` is the whole selector, ``expr[matcher start:end]`` its ``{...}``."""
    names = metric_names(expr)
    # Inside {} only label names occur, so a name found there is never a selector.
    masked = _STRING.sub(lambda m: " " * len(m.group()), expr)
    out = []
    for match in _SELECTOR.finditer(masked):
        name = match.group(1)
        if name in names:
            start, end = match.span(2) if match.group(2) else (match.end(1), match.end(1))
            out.append((name, match.start(1), start, end))
    return out


def selectors(expr: str) -> list[tuple[str, str]]:
    """Each vector selector in ``expr`` as ``(metric name, matcher text)``; matcher may be ''."""
    return [(name, expr[start:end]) for name, _, start, end in selector_spans(expr)]
