"""What the OpenTelemetry bridge adds per provider call and per served request, next to what
OpenTelemetry's own instrumentations add, in one process.

Every OpenTelemetry variant records through the SDK: a tracer provider whose spans go to a
null exporter (through a ``SimpleSpanProcessor``, so each span is handed over as it ends)
and a meter provider with an in-memory reader (aggregated, never exported).

- per request, FastAPI driven through its ASGI callable and Flask through its WSGI one (no
  sockets, no server; no trace header): ``bare``; ``ours`` (``instrument_app``, access log
  off, the bridge off); ``ours_bridge`` (the same with the bridge on: a SERVER span per
  request); ``otel`` (``FastAPIInstrumentor`` / ``FlaskInstrumentor``, when installed);
- per provider call, the ``openai`` SDK against canned bytes (``benchmarks.sdk``), plain and
  a 50-chunk stream: ``bare``; ``ours`` (``instrument_openai``, the bridge off);
  ``ours_bridge`` (a CLIENT span with the GenAI attributes and the three GenAI metrics);
  ``otel`` (``opentelemetry-instrumentation-genai-openai``'s ``OpenAIInstrumentor``).

``bridge_added_us`` is what turning the bridge on adds to ours; ``otel_added_us`` what
OpenTelemetry's instrumentation adds to the bare call; ``bridge_ratio`` the first over the
second (target: <= 1.0). Rounds alternate between the variants; medians are reported.

    python -m benchmarks.otel [--quick] [--json]      entry points: main(quick), report()
    python -m benchmarks.otel --instructions [--quick] [--json]     callgrind counts:
        instructions(quick), report_instructions(results)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

import instrument
from benchmarks import adapters, sdk
from benchmarks.decorators import TRACE, _fresh_logging


class Providers:
    """The SDK's tracer and meter providers every OpenTelemetry variant records into."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        providers = self
        self.spans = 0

        class NullExporter(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                providers.spans += len(spans)  # proof that the variant made spans
                return SpanExportResult.SUCCESS

        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])


class Bridge:
    """The bridge, on for its variant's turn only."""

    def __init__(self, providers: Providers) -> None:
        self.providers = providers

    def on(self) -> None:
        from instrument.adapters.otel import enable

        enable(self.providers.tracer_provider, self.providers.meter_provider)

    def off(self) -> None:
        from instrument.adapters.otel import disable

        disable()


def _per_call(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _timed(run: Callable[[int], Any], n: int, asynchronous: bool) -> float:
    start = time.perf_counter()
    if asynchronous:
        asyncio.run(run(n))
    else:
        run(n)
    return (time.perf_counter() - start) / n * 1e6


def _figures(med: dict[str, float]) -> dict[str, float]:
    out = {"bare_us": med["bare"]}
    for name, value in med.items():
        if name != "bare":
            out[f"{name}_added_us"] = value - med["bare"]
    out["bridge_added_us"] = med["ours_bridge"] - med["ours"]
    if "otel" in med and med["otel"] > med["bare"]:
        out["bridge_ratio"] = out["bridge_added_us"] / out["otel_added_us"]
    return out


# -- served requests ----------------------------------------------------------------------

def _request_apps(framework: str, providers: Providers) -> tuple[dict[str, Any], str]:
    """name -> app; and what OpenTelemetry's instrumentation is (or why it is missing)."""
    if framework == "fastapi":
        from instrument.adapters.starlette import instrument_app

        make = adapters._fastapi_app
        module, name = "opentelemetry.instrumentation.fastapi", "FastAPIInstrumentor"
    else:
        from instrument.adapters.flask import instrument_app  # type: ignore[assignment]

        make = adapters._flask_app
        module, name = "opentelemetry.instrumentation.flask", "FlaskInstrumentor"
    apps = {"bare": make(), "ours": instrument_app(make(), access_log=False),
            "ours_bridge": instrument_app(make(), access_log=False)}
    try:
        instrumentor = getattr(__import__(module, fromlist=[name]), name)
    except ImportError as exc:
        return apps, f"not installed ({exc})"
    theirs = make()
    instrumentor.instrument_app(theirs, tracer_provider=providers.tracer_provider,
                                meter_provider=providers.meter_provider)
    apps["otel"] = theirs
    return apps, module


def bench_requests(framework: str, n: int, rounds: int) -> dict[str, Any]:
    instrument.configure(registry=CollectorRegistry())
    adapters._logging_for("bare")
    providers = Providers()
    bridge = Bridge(providers)
    apps, otel = _request_apps(framework, providers)
    asynchronous = framework == "fastapi"
    runner = adapters._asgi_runner if asynchronous else adapters._wsgi_runner
    runs = {name: runner(app, trace_header=False) for name, app in apps.items()}
    samples: dict[str, list[float]] = {name: [] for name in runs}

    def one(name: str) -> float:
        if name == "ours_bridge":
            bridge.on()
        try:
            return _timed(runs[name], n, asynchronous)
        finally:
            if name == "ours_bridge":
                bridge.off()

    for name in runs:  # warm-up: first requests build caches
        one(name)
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            samples[name].append(one(name))
    out: dict[str, Any] = _figures({k: statistics.median(v) for k, v in samples.items()})
    out["otel"], out["spans"] = otel, providers.spans
    return out


# -- provider calls -------------------------------------------------------------------------

def bench_provider(n: int, rounds: int) -> dict[str, Any]:
    from instrument.adapters.openai import instrument_openai

    registry = CollectorRegistry()
    instrument.configure(registry=registry)
    _fresh_logging()
    providers = Providers()
    bridge = Bridge(providers)
    genai = sdk.Otel()
    if genai.instrumentor is not None:  # the same providers as the bridge
        genai.kwargs = {"tracer_provider": providers.tracer_provider,
                        "meter_provider": providers.meter_provider}
    stream_options = {"include_usage": True}

    def calls(client: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
        def plain() -> Any:
            return client.chat.completions.create(model=sdk.MODEL, messages=sdk.MESSAGES)

        def stream() -> None:
            for _ in client.chat.completions.create(model=sdk.MODEL, messages=sdk.MESSAGES,
                                                    stream=True, stream_options=stream_options):
                pass

        return plain, stream

    ours = instrument_openai(sdk._client())
    variants: dict[str, tuple[Callable[[], Any], Callable[[], Any], Any]] = {
        "bare": (*calls(sdk._client()), None),
        "ours": (*calls(ours), None),
        "ours_bridge": (*calls(ours), bridge),
    }
    if genai.instrumentor is not None:
        variants["otel"] = (*calls(sdk._client()), genai)
    samples: dict[str, dict[str, list[float]]] = {
        kind: {name: [] for name in variants} for kind in ("call", "stream")}

    def one(fn: Callable[[], Any], count: int, switch: Any) -> float:
        if switch is not None:
            switch.on()
        try:
            fn()  # warm
            return _per_call(fn, count)
        finally:
            if switch is not None:
                switch.off()

    with instrument.use_trace_id(TRACE):
        for r in range(rounds):
            order = list(variants.items())
            if r % 2:
                order.reverse()
            for name, (plain, stream, switch) in order:
                samples["call"][name].append(one(plain, n, switch))
                samples["stream"][name].append(one(stream, max(n // 5, 1), switch))
    out: dict[str, Any] = {"otel": genai.name or f"not installed ({genai.missing.strip()})",
                           "spans": providers.spans}
    for kind, by_name in samples.items():
        out[kind] = _figures({k: statistics.median(v) for k, v in by_name.items()})
    return out


def main(quick: bool = False) -> dict[str, Any]:
    """Every figure: ``{"fastapi": ..., "flask": ..., "provider": {"call", "stream"}}``."""
    n, calls, rounds = (20, 10, 1) if quick else (1000, 150, 9)
    return {"fastapi": bench_requests("fastapi", n, rounds),
            "flask": bench_requests("flask", n, rounds),
            "provider": bench_provider(calls, rounds)}


def _row(label: str, f: dict[str, float]) -> str:
    otel = (f"OpenTelemetry's adds {f['otel_added_us']:.1f} us; bridge / OpenTelemetry "
            f"{f['bridge_ratio']:.2f}x (target <= 1.0x)" if "bridge_ratio" in f
            else "OpenTelemetry's instrumentation not measured")
    return (f"  {label}: bare {f['bare_us']:.1f} us; ours adds {f['ours_added_us']:.1f} us, "
            f"the bridge {f['bridge_added_us']:.1f} us more; {otel}")


def report(results: dict[str, Any]) -> str:
    lines = ["OpenTelemetry bridge (one process, alternating, median of rounds; null exporter)"]
    for framework in ("fastapi", "flask"):
        r = results[framework]
        lines.append(_row(f"{framework} request", r) + f" [{r['otel']}]")
    p = results["provider"]
    lines.append(_row("openai plain call", p["call"]) + f" [{p['otel']}]")
    lines.append(_row(f"openai {sdk.CHUNKS}-chunk stream", p["stream"]))
    return "\n".join(lines)


# -- instructions (callgrind) --------------------------------------------------------------

VARIANTS = ("bare", "ours", "ours_bridge", "otel")
#: what ``instructions()`` counts: a FastAPI request, a Flask request, an openai SDK call, a
#: 50-chunk stream
KINDS = ("request", "flask_request", "sdk_call", "sdk_stream")


def child(kind: str, n: int) -> None:
    """Every variant of ``kind``, one after another (``benchmarks._callgrind.measure``);
    OpenTelemetry's GenAI instrumentation patches the SDK process-wide, so it comes last."""
    from benchmarks._callgrind import measure

    instrument.configure(registry=CollectorRegistry())
    adapters._logging_for("bare")
    providers = Providers()
    bridge = Bridge(providers)
    if kind in ("request", "flask_request"):
        apps, _otel = _request_apps("fastapi" if kind == "request" else "flask", providers)
        for variant in VARIANTS:
            if variant == "ours_bridge":
                bridge.on()
            if kind == "request":
                served = adapters._asgi_runner(apps[variant], trace_header=False)
                measure(n, lambda served=served: lambda k: asyncio.run(served(k)))
            else:
                measure(n, lambda app=apps[variant]: adapters._wsgi_runner(app,
                                                                           trace_header=False))
            bridge.off()
        return
    from instrument.adapters.openai import instrument_openai

    def calls(client: Any) -> Callable[[int], Any]:
        create = client.chat.completions.create

        def run(k: int) -> None:
            for _ in range(k):
                if kind == "sdk_call":
                    create(model=sdk.MODEL, messages=sdk.MESSAGES)
                    continue
                for _chunk in create(model=sdk.MODEL, messages=sdk.MESSAGES, stream=True,
                                     stream_options={"include_usage": True}):
                    pass

        return run

    ours = instrument_openai(sdk._client())
    for variant in VARIANTS:
        if variant == "ours_bridge":
            bridge.on()
        elif variant == "otel":
            bridge.off()
            genai = sdk.Otel()
            genai.kwargs = {"tracer_provider": providers.tracer_provider,
                            "meter_provider": providers.meter_provider}
            genai.on()
        client = ours if variant.startswith("ours") else sdk._client()
        measure(n, lambda client=client: calls(client))


def instructions(quick: bool = False) -> dict[str, dict[str, float]]:
    """Instructions per operation (``valgrind --tool=callgrind``: the difference between N
    and 2N operations, over N); what ours, the bridge and OpenTelemetry's instrumentation
    add, and the bridge over OpenTelemetry's."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks._callgrind import per_operation

    sizes = {"request": 20, "flask_request": 20, "sdk_call": 3, "sdk_stream": 1} if quick else {
        "request": 400, "flask_request": 400, "sdk_call": 24, "sdk_stream": 4}

    def count(kind: str) -> dict[str, float]:
        return per_operation("benchmarks.otel", [kind, str(sizes[kind])], VARIANTS, sizes[kind])

    with ThreadPoolExecutor(2) as pool:  # one process per kind, one per core
        counted = dict(zip(KINDS, pool.map(count, KINDS), strict=True))
    results: dict[str, dict[str, float]] = {}
    for kind, per in counted.items():
        bare = per["bare"]
        figures = {f"{v}_instructions": per[v] for v in VARIANTS}
        figures.update({f"{v}_added": per[v] - bare for v in VARIANTS[1:]})
        figures["bridge_added"] = per["ours_bridge"] - per["ours"]
        figures["bridge_over_otel"] = figures["bridge_added"] / figures["otel_added"]
        results[kind] = figures
    return results


def report_instructions(results: dict[str, dict[str, float]]) -> str:
    lines = ["OpenTelemetry bridge, instructions per operation (callgrind; null exporter)"]
    for kind, label in (("request", "FastAPI request"), ("flask_request", "Flask request"),
                        ("sdk_call", "openai plain call"),
                        ("sdk_stream", f"openai {sdk.CHUNKS}-chunk stream")):
        f = results[kind]
        lines.append(f"  {label}: bare {f['bare_instructions']:,.0f}; ours adds "
                     f"{f['ours_added']:,.0f}, the bridge {f['bridge_added']:,.0f} more; "
                     f"OpenTelemetry's adds {f['otel_added']:,.0f} (bridge / OpenTelemetry "
                     f"{f['bridge_over_otel']:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    elif "--instructions" in sys.argv:
        counted = instructions(quick="--quick" in sys.argv)
        print(json.dumps(counted) if "--json" in sys.argv else report_instructions(counted))
    else:
        found = main(quick="--quick" in sys.argv)
        print(json.dumps(found) if "--json" in sys.argv else report(found))
