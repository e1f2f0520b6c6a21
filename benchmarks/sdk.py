"""What instrumenting the OpenAI SDK costs per call, next to the OpenTelemetry GenAI
instrumentation, in one process.

The same ``chat.completions.create`` call, plain and as a 50-chunk stream (read
to its end, with the usage chunk), goes through the real ``openai`` SDK to an
in-process ``httpx2.MockTransport`` answering canned bytes (with rate-limit
headers), so the figures are the SDK's own cost plus what each observer adds:

- ``bare``: the SDK alone;
- ``instrument_openai``: the client instrumented (prices from the shipped table);
- ``instrument_openai_genai_prices``: the same, priced by ``genai-prices`` (when installed);
- ``track_provider``: ``@track_provider`` around a function making the bare call (for
  the stream, a generator yielding the SDK's chunks);
- ``hand``: prometheus-client written by hand around the bare call: in-flight gauge,
  requests by status, a duration histogram and input/output token counters from the
  response's ``usage`` (the stream's last chunk), each through ``labels()``;
- ``otel``: ``OpenAIInstrumentor`` of ``opentelemetry-instrumentation-genai-openai``
  (or its predecessor ``-openai-v2``), with the OpenTelemetry SDK's tracer provider
  exporting spans to a null exporter and a meter provider with an in-memory reader
  (measurements aggregated, never exported). It patches the SDK's classes, so it is
  instrumented for its own turn of each round and uninstrumented after.

Rounds alternate between the variants; medians are reported, with what each adds to
the bare call and the ratio of ours to OpenTelemetry's.
"""

from __future__ import annotations

import importlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry

import instrument
from benchmarks.decorators import TRACE, _fresh_logging
from instrument import _pricing, track_provider

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]
CHUNKS = 50
HEADERS = {"content-type": "application/json", "x-request-id": "req_bench",
           "x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999",
           "x-ratelimit-limit-tokens": "2000000", "x-ratelimit-remaining-tokens": "1998800"}
USAGE = {"prompt_tokens": 1200, "completion_tokens": CHUNKS, "total_tokens": 1200 + CHUNKS,
         "prompt_tokens_details": {"cached_tokens": 1000}}
_HEAD = {"id": "chatcmpl-bench", "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18"}
OTEL_PACKAGES = (("opentelemetry-instrumentation-genai-openai",
                  "opentelemetry.instrumentation.genai.openai"),
                 ("opentelemetry-instrumentation-openai-v2",
                  "opentelemetry.instrumentation.openai_v2"))


def _bodies() -> tuple[bytes, bytes]:
    plain = json.dumps({**_HEAD, "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x" * CHUNKS},
         "finish_reason": "stop", "logprobs": None}], "usage": USAGE}).encode()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({**_HEAD, "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": "x"}) for _ in range(CHUNKS - 1)]
    events.append(chunk({}, "stop"))
    events.append(b"data: " + json.dumps({**_HEAD, "object": "chat.completion.chunk",
                                          "choices": [], "usage": USAGE}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return plain, b"".join(events)


def _client() -> Any:
    import httpx2
    import openai

    plain, stream = _bodies()

    def answer(request: Any) -> Any:
        streamed = b'"stream":true' in request.content or b'"stream": true' in request.content
        if streamed:
            return httpx2.Response(200, content=stream,
                                   headers={**HEADERS, "content-type": "text/event-stream"})
        return httpx2.Response(200, content=plain, headers=HEADERS)

    return openai.OpenAI(base_url="http://bench.invalid/v1", api_key="sk-bench", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(answer)))


class Otel:
    """The OpenTelemetry GenAI instrumentation, with the SDK's providers, when installed."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.missing = ""
        self.instrumentor: Any = None
        self.kwargs: dict[str, Any] = {}
        self.spans = 0
        for dist, module in OTEL_PACKAGES:
            try:
                found = importlib.import_module(module)
            except ImportError as exc:
                self.missing += f"{dist}: {exc}; "
                continue
            self.name = f"{dist} {metadata.version(dist)}"
            self.instrumentor = found.OpenAIInstrumentor()
            break
        if self.instrumentor is None:
            return
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        otel = self

        class NullExporter(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                otel.spans += len(spans)  # proof that it observed the calls
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
        self.kwargs = {"tracer_provider": tracer_provider,
                       "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()])}

    def on(self) -> None:
        self.instrumentor.instrument(**self.kwargs)

    def off(self) -> None:
        self.instrumentor.uninstrument()


def _variants(otel: Otel) -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Any]]:
    """name -> (plain call, stream read to its end, otel or None)"""
    from instrument.adapters.openai import instrument_openai

    bare, ours = _client(), instrument_openai(_client())
    create = bare.chat.completions.create
    stream_options = {"include_usage": True}

    @track_provider("openai")
    def decorated(model: str = MODEL) -> Any:
        return create(model=model, messages=MESSAGES)

    @track_provider("openai")
    def decorated_stream(model: str = MODEL) -> Iterator[Any]:
        yield from create(model=model, messages=MESSAGES, stream=True,
                          stream_options=stream_options)

    def calls(client: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
        def plain() -> Any:
            return client.chat.completions.create(model=MODEL, messages=MESSAGES)

        def stream() -> Any:
            for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                                    stream_options=stream_options):
                pass

        return plain, stream

    def read_decorated() -> None:
        for _ in decorated_stream():
            pass

    hand_plain, hand_stream = _by_hand(create, stream_options)

    found: dict[str, tuple[Callable[[], Any], Callable[[], Any], Any]] = {
        "bare": (*calls(bare), None),
        "instrument_openai": (*calls(ours), "bundled"),
        "track_provider": (decorated, read_decorated, "bundled"),
        "hand": (hand_plain, hand_stream, None),
    }
    if _pricing.use_genai_prices(True):
        found["instrument_openai_genai_prices"] = (*calls(ours), "genai")
    if otel.instrumentor is not None:
        found["otel"] = (*calls(_client()), otel)
    return found


def _by_hand(create: Callable[..., Any], stream_options: dict[str, Any]
             ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The least metrics a careful user writes with prometheus-client around the call."""
    from prometheus_client import Counter, Gauge, Histogram

    registry = CollectorRegistry()
    inflight = Gauge("hand_inflight", "x", ["provider"], registry=registry)
    requests = Counter("hand_requests_total", "x", ["provider", "model", "status"],
                       registry=registry)
    duration = Histogram("hand_duration_seconds", "x", ["provider", "model"],
                         registry=registry)
    tokens = Counter("hand_tokens_total", "x", ["provider", "model", "type"],
                     registry=registry)

    def observed(call: Callable[[], Any]) -> Any:
        inflight.labels("openai").inc()
        start, status = time.perf_counter(), "error"
        try:
            usage = call()
            status = "ok"
            if usage is not None:
                tokens.labels("openai", MODEL, "input").inc(usage.prompt_tokens)
                tokens.labels("openai", MODEL, "output").inc(usage.completion_tokens)
        finally:
            inflight.labels("openai").dec()
            requests.labels("openai", MODEL, status).inc()
            duration.labels("openai", MODEL).observe(time.perf_counter() - start)

    def plain() -> Any:
        return observed(lambda: create(model=MODEL, messages=MESSAGES).usage)

    def read() -> Any:
        usage = None
        for chunk in create(model=MODEL, messages=MESSAGES, stream=True,
                            stream_options=stream_options):
            usage = chunk.usage or usage
        return usage

    return plain, lambda: observed(read)


def _per_call(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _run(fn: Callable[[], Any], n: int, mode: Any) -> float:
    if isinstance(mode, Otel):
        mode.on()
    else:
        _pricing.use_genai_prices(mode == "genai")
    try:
        fn()  # warm: first-use lookups and caches outside the timing
        return _per_call(fn, n)
    finally:
        if isinstance(mode, Otel):
            mode.off()


def bench(n: int, rounds: int) -> dict[str, Any]:
    registry = CollectorRegistry()
    instrument.configure(registry=registry)
    _fresh_logging()
    otel = Otel()
    variants = _variants(otel)
    samples: dict[str, dict[str, list[float]]] = {
        kind: {name: [] for name in variants} for kind in ("call", "stream")}
    with instrument.use_trace_id(TRACE):
        for r in range(rounds):
            order = list(variants.items())
            if r % 2:
                order.reverse()  # no variant always runs right after another
            for name, (plain, stream, mode) in order:
                samples["call"][name].append(_run(plain, n, mode))
                samples["stream"][name].append(_run(stream, max(n // 5, 1), mode))
    _pricing.reset_prices()
    out: dict[str, Any] = {"otel": otel.name or f"not installed ({otel.missing.strip()})",
                           # what the variants observed, so none of them measures a no-op
                           "otel_spans": otel.spans,
                           "our_calls": sum(s.value for m in registry.collect()
                                            if m.name == "provider_requests"
                                            for s in m.samples
                                            if s.name == "provider_requests_total")}
    for kind, by_name in samples.items():
        med = {name: statistics.median(v) for name, v in by_name.items()}
        figures: dict[str, float] = {"bare_us": med["bare"]}
        for name, value in med.items():
            if name != "bare":
                figures[f"{name}_added_us"] = value - med["bare"]
        if "otel" in med and med["otel"] > med["bare"]:
            figures["ratio_vs_otel"] = ((med["instrument_openai"] - med["bare"])
                                        / (med["otel"] - med["bare"]))
        out[kind] = figures
    return out


def main(quick: bool = False) -> dict[str, Any]:
    # short rounds, many of them: a slow drift of the machine lands on every variant alike
    n, rounds = (20, 2) if quick else (150, 9)
    return bench(n, rounds)


def report(results: dict[str, Any]) -> str:
    lines = [f"openai SDK (one process, alternating, median of rounds; OpenTelemetry: "
             f"{results['otel']})"]
    for kind, label in (("call", "plain call"), ("stream", f"{CHUNKS}-chunk stream")):
        f = results[kind]
        added = ", ".join(f"{k[:-len('_added_us')]} +{v:.1f} us" for k, v in f.items()
                          if k.endswith("_added_us"))
        ratio = (f"; ours / OpenTelemetry's {f['ratio_vs_otel']:.2f}x"
                 if "ratio_vs_otel" in f else "")
        lines.append(f"  {label}: bare {f['bare_us']:.1f} us; {added}{ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
