"""What a scrape costs: ``/metrics`` against prometheus-client's own ``generate_latest``.

One registry holds a realistic catalog, recorded through the toolkit's own paths: 20
routes x 6 statuses of served requests (with exemplars), 5 providers x 10 models of
provider calls with tokens and cost, 10 SSE endpoints, caches and spans. Rendering
``/metrics`` (text and OpenMetrics) through the toolkit's exposition is timed against
``generate_latest`` on the same registry, alternating; ``/metrics/summary`` on its own.
Targets: ``/metrics`` <= 1.1x ``generate_latest``; ``/metrics/summary`` <= 20 ms. In
multiprocess mode four worker processes write the catalog and a fifth scrapes the merge.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

import instrument
from instrument._exposition import respond
from instrument._http import ServerRequest
from instrument._sse import SSEStream

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
ROUTES, STATUSES = 20, (200, 201, 400, 404, 500, 503)
PROVIDERS, MODELS = 5, 10
ENDPOINTS = 10


def catalog(registry: CollectorRegistry) -> int:
    """Fill ``registry`` with the realistic catalog; returns the samples a scrape shows."""
    metrics = instrument.configure(registry=registry)
    for r in range(ROUTES):
        for i, status in enumerate(STATUSES):
            req = ServerRequest("GET", f"/r{r}", [(b"x-trace-id", f"t{r}-{i}".encode())],
                                access_log=False, metrics=metrics)
            req.start -= 0.001 * (1 + i * 40)  # spread over the buckets: exemplars in several
            req.set_route(f"/r{r}/{{id}}")
            req.response_started(status)
            req.finish()
    for p in range(PROVIDERS):
        for m in range(MODELS):
            call = instrument.track_provider(f"provider{p}", f"model{m}")(
                lambda: {"usage": {"prompt_tokens": 100, "completion_tokens": 20}})
            call()
    for e in range(ENDPOINTS):
        stream = SSEStream(metrics, f"/stream{e}", None, attach=False)
        stream.item("data: x\n\n")
        stream.end("ok", None)
    for c in ("answers", "embeddings"):
        with instrument.trace_span(f"span-{c}"):
            pass
    return sum(len(family.samples) for family in registry.collect())


def _median_ms(fn: Callable[[], Any], rounds: int, number: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number * 1000)
    return statistics.median(samples)


def main(quick: bool = False) -> dict[str, float]:
    rounds, number = (1, 2) if quick else (9, 20)
    registry = CollectorRegistry()
    samples = catalog(registry)
    runs: dict[str, Callable[[], Any]] = {
        "ours_text": lambda: respond("", None, registry),
        "client_text": lambda: generate_latest(registry),
        "ours_openmetrics": lambda: respond("", OPENMETRICS, registry),
        "client_openmetrics": lambda: generate_openmetrics(registry),
    }
    assert respond("", OPENMETRICS, registry).content_type.startswith(
        "application/openmetrics-text")
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):  # alternating, so load hits every row alike
        for name, run in runs.items():
            figures[name].append(_median_ms(run, 1, number))
    out = {f"{name}_ms": statistics.median(v) for name, v in figures.items()}
    out["samples"] = float(samples)

    def paired(ours: str, theirs: str) -> float:  # per round, then the median: drift cancels
        return statistics.median(a / b for a, b in zip(figures[ours], figures[theirs],
                                                      strict=True))

    out["text_ratio"] = paired("ours_text", "client_text")
    out["openmetrics_ratio"] = paired("ours_openmetrics", "client_openmetrics")
    out["summary_ms"] = _median_ms(lambda: respond("/summary", None, registry), rounds, number)
    out["mp"] = multiprocess(quick)  # type: ignore[assignment]
    return out


WORKERS = 4


def multiprocess(quick: bool = False) -> dict[str, float]:
    """The same catalog written by four worker processes into ``PROMETHEUS_MULTIPROC_DIR``,
    merged at scrape time: ours against prometheus-client's ``MultiProcessCollector``."""
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        for _ in range(WORKERS):
            subprocess.run([sys.executable, "-m", "benchmarks.scrape", "--worker"], env=env,
                           check=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.scrape", "--merge",
                              "quick" if quick else "full"], env=env, check=True,
                             capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def _merge(quick: bool) -> dict[str, float]:
    from prometheus_client import multiprocess as client_multiprocess

    rounds, number = (1, 1) if quick else (7, 5)
    registry = CollectorRegistry()
    instrument.configure(registry=registry)
    theirs = CollectorRegistry()
    client_multiprocess.MultiProcessCollector(theirs)  # type: ignore[no-untyped-call]
    ours_ms, client_ms = [], []
    for _ in range(rounds):
        ours_ms.append(_median_ms(lambda: respond("", None, registry), 1, number))
        client_ms.append(_median_ms(lambda: generate_latest(theirs), 1, number))
    ours, client = statistics.median(ours_ms), statistics.median(client_ms)
    return {"workers": float(WORKERS), "ours_ms": ours, "client_ms": client,
            "ratio": ours / client,
            "samples": float(sum(len(f.samples) for f in theirs.collect()))}


def report(r: dict[str, float]) -> str:
    return "\n".join([
        f"scrape ({int(r['samples'])} samples: {ROUTES} routes x {len(STATUSES)} statuses, "
        f"{PROVIDERS} providers x {MODELS} models, {ENDPOINTS} SSE endpoints, exemplars on)",
        f"  /metrics text {r['ours_text_ms']:.2f} ms vs generate_latest "
        f"{r['client_text_ms']:.2f} ms ({r['text_ratio']:.2f}x; target <= 1.1x)",
        f"  OpenMetrics {r['ours_openmetrics_ms']:.2f} ms vs prometheus-client's "
        f"{r['client_openmetrics_ms']:.2f} ms ({r['openmetrics_ratio']:.2f}x; target <= 1.1x)",
        f"  /metrics/summary {r['summary_ms']:.2f} ms (target <= 20 ms)",
        *([f"  multiprocess, {int(mp['workers'])} workers' files ({int(mp['samples'])} "
           f"samples): /metrics {mp['ours_ms']:.1f} ms vs MultiProcessCollector "
           f"{mp['client_ms']:.1f} ms ({mp['ratio']:.2f}x)"] if (mp := r.get("mp")) else []),
    ])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # one gunicorn-like worker: writes its files, exits
        catalog(CollectorRegistry())
    elif sys.argv[1:2] == ["--merge"]:
        print(json.dumps(_merge(sys.argv[2] == "quick")))
    else:
        print(report(main()))
