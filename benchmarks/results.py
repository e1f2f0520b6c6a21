"""RESULTS.md: the machine, the versions, each case's figures and every target, met or not."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

PACKAGES = ("llm-instrument", "prometheus-client", "loguru", "fastapi", "starlette", "flask",
            "uvicorn", "gunicorn", "uvloop", "httptools", "openai", "httpx2",
            "prometheus-fastapi-instrumentator", "prometheus-flask-exporter",
            "opentelemetry-sdk", "opentelemetry-instrumentation-genai-openai", "orjson",
            "structlog")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _get(figures: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(figures, dict) or key not in figures:
            return None
        figures = figures[key]
    return figures


Target = tuple[str, "float | None", str, Callable[[float], bool]]


def targets(r: dict[str, Any]) -> Iterator[Target]:
    """(what, figure, target, met?) for every target the issue sets."""
    def at_most(limit: float) -> Callable[[float], bool]:
        return lambda v: v <= limit

    def at_least(limit: float) -> Callable[[float], bool]:
        return lambda v: v >= limit

    yield ("@track_provider added / hand-written metrics added",
           _get(r, "decorators", "provider_call", "ratio"), "<= 1.0x", at_most(1.0))
    for fw in ("fastapi", "flask"):
        yield (f"{fw} in-process: ours added / the floor's (access log off)",
               _get(r, "adapters", fw, "over_floor"), "<= 1.5x", at_most(1.5))
        yield (f"{fw} in-process: ours with the access log / the alternative",
               _get(r, "adapters", fw, "access_log_ratio"), "<= 1.0x", at_most(1.0))
        yield (f"{fw} over the wire: ours throughput / bare (access log off; median "
               f"of per-round ratios)", _get(r, "wire", fw, "ours_over_bare", "median"),
               ">= 0.95x", at_least(0.95))
        yield (f"{fw} over the wire: ours throughput with the access log / the alternative's",
               _get(r, "wire", fw, "ours_access_log_over_alternative", "median"),
               ">= 1.0x", at_least(1.0))
    yield ("/metrics text / generate_latest", _get(r, "scrape", "text_ratio"), "<= 1.1x",
           at_most(1.1))
    yield ("/metrics OpenMetrics / prometheus-client's", _get(r, "scrape", "openmetrics_ratio"),
           "<= 1.1x", at_most(1.1))
    yield ("/metrics/summary (ms)", _get(r, "scrape", "summary_ms"), "<= 20 ms", at_most(20))
    grown = _get(r, "memory", "provider_calls", "rss_growth_bytes")
    yield ("1M tracked calls: RSS growth (MB)", None if grown is None else grown / 1e6,
           "<= 2 MB", at_most(2.0))
    for kind in ("call", "stream"):
        ours = _get(r, "sdk", kind, "instrument_openai_added_us")
        peers = {"opentelemetry-genai-openai": _get(r, "sdk", kind, "otel_added_us"),
                 "openlit": _get(r, "peers", kind, "openlit_added_us"),
                 "traceloop": _get(r, "peers", kind, "traceloop_added_us")}
        if kind == "stream" and _get(r, "peers", "openlit", "stream_failed_offline"):
            peers.pop("openlit")  # its failure path, not its cost
        valid = {k: v for k, v in peers.items() if v is not None and v > 0}
        cheapest = min(valid.items(), key=lambda kv: kv[1]) if valid else None
        ratio = None if ours is None or cheapest is None else ours / cheapest[1]
        yield (f"openai {kind}: instrument_openai added / the cheapest OTel-based peer's"
               + (f" ({cheapest[0]})" if cheapest else ""), ratio, "<= 0.5x", at_most(0.5))
    for key, label in (("fastapi", "FastAPI request"), ("flask", "Flask request")):
        yield (f"OTel bridge, {label}: what it adds / what OpenTelemetry's instrumentation "
               f"adds", _get(r, "otel", key, "bridge_ratio"), "<= 1.0x", at_most(1.0))
    for key, label in (("call", "openai call"), ("stream", "openai stream")):
        yield (f"OTel bridge, {label}: what it adds / what the GenAI OpenAI instrumentation "
               f"adds", _get(r, "otel", "provider", key, "bridge_ratio"), "<= 1.0x",
               at_most(1.0))
    # the same targets in instructions (callgrind): repeatable under any load
    for fw in ("fastapi", "flask"):
        yield (f"{fw} instructions: ours added / the floor's",
               _get(r, "instructions", "requests", fw, "over_floor"), "<= 1.5x", at_most(1.5))
        yield (f"{fw} instructions: ours added / the alternative's",
               _get(r, "instructions", "requests", fw, "over_alternative"), "<= 1.0x",
               at_most(1.0))
    ours = _get(r, "instructions", "requests", "sdk", "instrument_openai_added")
    peers = {name: _get(r, "instructions", name_path[0], *name_path[1:])
             for name, name_path in (
                 ("opentelemetry-genai-openai", ("otel", "sdk_call", "otel_added")),
                 ("openlit", ("peers", "openlit", "added")),
                 ("traceloop", ("peers", "traceloop", "added")))}
    counted = {k: v for k, v in peers.items() if v is not None and v > 0}
    cheapest = min(counted.items(), key=lambda kv: kv[1]) if counted else None
    yield ("openai call instructions: instrument_openai added / the cheapest OTel-based peer's"
           + (f" ({cheapest[0]})" if cheapest else ""),
           _ratio(ours, cheapest[1] if cheapest else None), "<= 0.5x", at_most(0.5))
    yield ("@track_provider instructions added / hand-written metrics'",
           _ratio(_get(r, "instructions", "requests", "decorator", "decorated_added"),
                  _get(r, "instructions", "requests", "decorator", "hand_added")),
           "<= 1.0x", at_most(1.0))
    for kind, label in (("request", "FastAPI request"), ("flask_request", "Flask request"),
                        ("sdk_call", "openai call"),
                        ("sdk_stream", "openai stream")):
        yield (f"OTel bridge instructions, {label}: bridge added / OpenTelemetry's",
               _get(r, "instructions", "otel", kind, "bridge_over_otel"), "<= 1.0x",
               at_most(1.0))


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None or bottom <= 0 else top / bottom


def verdict(figure: float | None, target: str,
            met: Callable[[float], bool]) -> tuple[str, str]:
    """How a figure shows in the table: (figure, met?). A ratio of costs (a target in ``x``)
    below zero means an instrumented variant measured cheaper than the bare one: noise larger
    than the cost, so the target is neither met nor missed."""
    if figure is None:
        return "not measured", "n/a"
    if figure < 0 and target.endswith("x"):
        return f"{figure:.3f}", "**unresolved** (below the noise)"
    return f"{figure:.3f}", "yes" if met(figure) else "**no**"


def markdown(results: dict[str, Any], seconds: dict[str, float], cases: list[Any],
             quick: bool = False) -> str:
    lines = ["# Benchmark results", "",
             "Written by `make bench` (`python -m benchmarks.run --results "
             "benchmarks/RESULTS.md`)." + (" **Quick run: tiny counts, figures "
                                            "meaningless.**" if quick else ""), "",
             "## Machine", "",
             f"- CPU: {_cpu()}, {os.cpu_count()} cores; {platform.platform()}",
             f"- Python {sys.version.split()[0]} ({platform.python_implementation()})",
             f"- load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
             "", "## Versions", "",
             ", ".join(f"{name} {_version(name)}" for name in PACKAGES), "",
             "## Targets", "", "| what | figure | target | met |", "| --- | --- | --- | --- |"]
    for what, figure, target, met in targets(results):
        shown, met_or_not = verdict(figure, target, met)
        lines.append(f"| {what} | {shown} | {target} | {met_or_not} |")
    lines += ["", "## Each case", "",
              "Medians over alternating rounds; ranges (min-max over rounds) where shown.", ""]
    for case in cases:
        if case.name in results:
            lines += [f"### {case.name} ({seconds.get(case.name, 0):.0f} s)", "", "```",
                      case.report(results[case.name]), "```", ""]
    return "\n".join(lines)
