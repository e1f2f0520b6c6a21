"""The LLM-layer peers that need their own venv: OpenLIT and OpenLLMetry (``traceloop-sdk``).

Both pin OpenTelemetry packages the project's dev extra cannot share, so ``make bench``
installs them into ``.venv-peers`` (pins in ``benchmarks/peers-constraints.txt``) and
each case runs there as a child process, on the very call ``benchmarks/sdk.py`` measures
(the same ``openai`` SDK, ``httpx2.MockTransport``, canned bytes): a plain call and a
50-chunk stream read to its end. Each peer patches the SDK's classes for the whole
process and offers no way back, so every child measures one mode only; the parent
alternates children (bare, openlit, traceloop; the order reversed every other round) and
takes, per round, what a peer adds to the bare child of the same round.

Exporters point at nothing: spans go to a null exporter (counted, so none measures a
no-op), metrics to a reader that is never exported, OpenLIT's price list is a local empty
file (it fetches one from the internet otherwise) and Traceloop's telemetry is off.

    python -m benchmarks.peers [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS = {"openlit": "openlit", "traceloop": "traceloop-sdk"}
#: what a child's stderr shows when a peer tried the network for its stream's token count
OFFLINE_FAILURE = "Error in trace creation"


# -- the child (runs in .venv-peers) --------------------------------------------------------

class _Spans:
    count = 0


def _null_exporters() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class NullSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            _Spans.count += len(spans)
            return SpanExportResult.SUCCESS

    class NullMetrics(MetricExporter):
        def __init__(self) -> None:
            super().__init__(preferred_temporality={})

        def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                   **kwargs: Any) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    return NullSpans(), NullMetrics()


def _init(peer: str) -> None:
    spans, metrics_exporter = _null_exporters()
    if peer == "openlit":
        import openlit
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as prices:
            json.dump({"chat": {}}, prices)
        openlit.init(tracer=tracer_provider.get_tracer("openlit"),
                     meter=meter_provider.get_meter("openlit"), pricing_json=prices.name,
                     disable_batch=True)
    elif peer == "traceloop":
        os.environ["TRACELOOP_TELEMETRY"] = "false"
        from traceloop.sdk import Traceloop
        from traceloop.sdk.instruments import Instruments

        Traceloop.init(app_name="bench", exporter=spans, metrics_exporter=metrics_exporter,
                       disable_batch=True, instruments={Instruments.OPENAI})


def child(peer: str, n: int) -> dict[str, Any]:
    from benchmarks.sdk import MESSAGES, MODEL, _client

    if peer != "bare":
        _init(peer)
    client = _client()
    create = client.chat.completions.create

    def plain() -> None:
        create(model=MODEL, messages=MESSAGES)

    def stream() -> None:
        for _ in create(model=MODEL, messages=MESSAGES, stream=True,
                        stream_options={"include_usage": True}):
            pass

    out: dict[str, Any] = {}
    for kind, fn, count in (("call", plain, n), ("stream", stream, max(n // 10, 1))):
        fn()  # warm: first-use lookups outside the timing
        start = time.perf_counter()
        for _ in range(count):
            fn()
        out[f"{kind}_us"] = (time.perf_counter() - start) / count * 1e6
    out["spans"] = _Spans.count
    out["version"] = metadata.version(PEERS[peer]) if peer in PEERS else ""
    return out


def callgrind_child(peer: str, n: int) -> None:
    """Under callgrind (``instructions``): the bare plain call, then the same with ``peer``
    instrumenting the SDK, each counted by ``benchmarks._callgrind.measure``."""
    from benchmarks._callgrind import measure
    from benchmarks.sdk import MESSAGES, MODEL, _client

    def calls() -> Any:
        create = _client().chat.completions.create
        return lambda k: [create(model=MODEL, messages=MESSAGES) for _ in range(k)]

    measure(n, calls)
    _init(peer)
    measure(n, calls)


def instructions(quick: bool = False) -> dict[str, Any]:
    """Instructions each peer adds to the plain call (callgrind, in .venv-peers): what
    wall clock cannot settle between child processes. Streams are left out: a traced
    OpenLIT or Traceloop stream takes a second or more under callgrind."""
    if not VENV_PYTHON.exists():
        return {"missing": f"{VENV_PYTHON.relative_to(ROOT)} not made (make bench makes it)"}
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks._callgrind import per_operation

    n = 3 if quick else 16
    os.environ["TRACELOOP_TELEMETRY"] = "false"  # the children inherit it

    def count(peer: str) -> dict[str, float]:
        per = per_operation("benchmarks.peers", [peer, str(n)], ("bare", peer), n,
                            python=str(VENV_PYTHON), flag="--callgrind-child")
        return {"bare_instructions": per["bare"], "added": per[peer] - per["bare"]}

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(PEERS, pool.map(count, PEERS), strict=True))


# -- the parent -------------------------------------------------------------------------------

def _run_child(peer: str, n: int) -> tuple[dict[str, Any], str]:
    out = subprocess.run([str(VENV_PYTHON), "-m", "benchmarks.peers", "--child", peer, str(n)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRACELOOP_TELEMETRY": "false"})
    if out.returncode != 0:
        raise RuntimeError(f"{peer} child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def main(quick: bool = False) -> dict[str, Any]:
    if not VENV_PYTHON.exists():
        return {"missing": f"{VENV_PYTHON.relative_to(ROOT)} not made (make bench makes it)"}
    n, rounds = (10, 1) if quick else (200, 3)  # traceloop: ~170 ms a stream
    modes = ("bare", *PEERS)
    samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    offline: dict[str, bool] = dict.fromkeys(PEERS, False)
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            figures, stderr = _run_child(mode, n)
            samples[mode].append(figures)
            if mode in offline and OFFLINE_FAILURE in stderr:
                offline[mode] = True
    out: dict[str, Any] = {"rounds": rounds, "calls": n}
    for kind in ("call", "stream"):
        bare = [s[f"{kind}_us"] for s in samples["bare"]]
        figures: dict[str, Any] = {"bare_us": statistics.median(bare)}
        for peer in PEERS:
            added = [s[f"{kind}_us"] - b for s, b in zip(samples[peer], bare, strict=True)]
            figures[f"{peer}_added_us"] = statistics.median(added)
            figures[f"{peer}_added_min_us"] = min(added)
            figures[f"{peer}_added_max_us"] = max(added)
        out[kind] = figures
    for peer in PEERS:
        out[peer] = {"version": samples[peer][0]["version"],
                     "spans": sum(s["spans"] for s in samples[peer]),
                     # its stream's span needs a tokenizer file from the internet
                     "stream_failed_offline": offline[peer]}
    return out


def report(r: dict[str, Any]) -> str:
    if "missing" in r:
        return f"LLM-layer peers (OpenLIT, OpenLLMetry): not run: {r['missing']}"
    lines = [f"LLM-layer peers in .venv-peers (one mode per child process, alternating, "
             f"{r['rounds']} rounds of {r['calls']} calls)"]
    for kind, label in (("call", "plain call"), ("stream", "50-chunk stream")):
        f = r[kind]
        parts = []
        for peer in PEERS:
            note = (" (its span failed: offline)" if kind == "stream"
                    and r[peer]["stream_failed_offline"] else "")
            parts.append(f"{peer} {r[peer]['version']} +{f[f'{peer}_added_us']:.0f} us "
                         f"({f[f'{peer}_added_min_us']:.0f}..{f[f'{peer}_added_max_us']:.0f})"
                         f"{note}")
        lines.append(f"  {label}: bare {f['bare_us']:.0f} us; " + ", ".join(parts))
    lines.append("  spans exported: " + ", ".join(f"{p} {r[p]['spans']}" for p in PEERS))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    elif sys.argv[1:2] == ["--callgrind-child"]:
        callgrind_child(sys.argv[2], int(sys.argv[3]))
    else:
        print(report(main(quick="--quick" in sys.argv)))
