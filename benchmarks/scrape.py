"""What a scrape costs: ``/metrics`` against prometheus-client's own ``generate_latest``.

One registry holds a realistic catalog, recorded through the toolkit's own paths: 20
routes x 6 statuses of served requests (with exemplars), 5 providers x 10 models of
provider calls with tokens and cost, 10 SSE endpoints, caches and spans. Rendering
``/metrics`` (text and OpenMetrics) through the toolkit's exposition is timed against
``generate_latest`` on the same registry, alternating; ``/metrics/summary`` on its own.
Targets: ``/metrics`` <= 1.1x ``generate_latest``; ``/metrics/summary`` <= 20 ms.
"""

from __future__ import annotations

import statistics
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
    out["text_ratio"] = out["ours_text_ms"] / out["client_text_ms"]
    out["openmetrics_ratio"] = out["ours_openmetrics_ms"] / out["client_openmetrics_ms"]
    out["summary_ms"] = _median_ms(lambda: respond("/summary", None, registry), rounds, number)
    return out


def report(r: dict[str, float]) -> str:
    return "\n".join([
        f"scrape ({int(r['samples'])} samples: {ROUTES} routes x {len(STATUSES)} statuses, "
        f"{PROVIDERS} providers x {MODELS} models, {ENDPOINTS} SSE endpoints, exemplars on)",
        f"  /metrics text {r['ours_text_ms']:.2f} ms vs generate_latest "
        f"{r['client_text_ms']:.2f} ms ({r['text_ratio']:.2f}x; target <= 1.1x)",
        f"  OpenMetrics {r['ours_openmetrics_ms']:.2f} ms vs prometheus-client's "
        f"{r['client_openmetrics_ms']:.2f} ms ({r['openmetrics_ratio']:.2f}x; target <= 1.1x)",
        f"  /metrics/summary {r['summary_ms']:.2f} ms (target <= 20 ms)",
    ])


if __name__ == "__main__":
    print(report(main()))
