"""Memory and series stay bounded: a million tracked calls, streams opened and closed,
requests and model names no one bounded upstream.

After a warm-up, each phase reports the growth of the resident set (``/proc/self/statm``)
and of traced memory (``tracemalloc``), and how many series a scrape shows. Targets: a
million calls over the allowed label values grow RSS by <= 2 MB; random paths and model
names leave the series count at what ``max_label_values`` allows.
"""

from __future__ import annotations

import gc
import os
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

import instrument
from instrument._http import ServerRequest
from instrument._sse import SSEStream

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MAX_LABEL_VALUES = 100


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux: RSS not reported
        return 0


def series(registry: CollectorRegistry) -> int:
    """Samples on a scrape (each histogram bucket one): what the series count grows with."""
    return sum(len(family.samples) for family in registry.collect())


def widest(registry: CollectorRegistry, label: str) -> int:
    """The most distinct values ``label`` takes in any one family: the bound to check
    (``max_label_values`` plus the overflow value)."""
    values: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if label in sample.labels:
                values.setdefault(family.name, set()).add(sample.labels[label])
    return max((len(v) for v in values.values()), default=0)


def _grown(work: Callable[[int], Any], warm: int, n: int) -> dict[str, float]:
    """RSS growth over ``n`` runs of ``work`` after ``warm``; then traced growth over n/20
    more (tracemalloc slows Python down some twentyfold: a sample is what it can afford)."""
    work(warm)
    gc.collect()
    rss = rss_bytes()
    work(n)
    gc.collect()
    grown = float(rss_bytes() - rss)
    tracemalloc.start()
    try:
        traced = tracemalloc.get_traced_memory()[0]
        work(max(n // 20, 1))
        gc.collect()
        traced_growth = float(tracemalloc.get_traced_memory()[0] - traced)
    finally:
        tracemalloc.stop()
    return {"rss_growth_bytes": grown, "traced_growth_bytes": traced_growth,
            "traced_n": float(max(n // 20, 1))}


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    calls, streams, requests = (200, 50, 200) if quick else (1_000_000, 10_000, 100_000)
    registry = CollectorRegistry()
    metrics = instrument.configure(registry=registry, max_label_values=MAX_LABEL_VALUES)
    rng = random.Random(7)
    models = [f"model-{i}" for i in range(10)]
    tracked = {m: instrument.track_provider("openai", m)(
        lambda: {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}) for m in models}

    def provider_calls(n: int) -> None:
        for i in range(n):
            tracked[models[i % 10]]()

    def sse_streams(n: int) -> None:
        for i in range(n):
            stream = SSEStream(metrics, f"/stream-{i % 10}", None, attach=False)
            stream.item("data: x\n\n")
            stream.end("ok", None)

    def random_requests(n: int) -> None:
        for _ in range(n):
            name = f"/r/{rng.getrandbits(48):x}"
            req = ServerRequest("GET", name, [], access_log=False, metrics=metrics)
            req.set_route(name)  # a route no one templated: bounded here
            req.response_started(200)
            req.finish()

    def random_models(n: int) -> None:
        call = instrument.track_provider("openai")(
            lambda model: {"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
        for _ in range(n):
            call(model=f"m-{rng.getrandbits(48):x}")

    warm = 100 if quick else 10_000
    out = {"provider_calls": {**_grown(provider_calls, warm, calls), "n": float(calls)},
           "sse_streams": {**_grown(sse_streams, 100, streams), "n": float(streams)}}
    before = series(registry)
    out["random_paths"] = {**_grown(random_requests, 100, requests), "n": float(requests)}
    out["random_models"] = {**_grown(random_models, 100, requests), "n": float(requests)}
    out["series"] = {"before_random": float(before), "after_random": float(series(registry)),
                     "max_label_values": float(MAX_LABEL_VALUES),
                     "widest_route": float(widest(registry, "route")),
                     "widest_model": float(widest(registry, "model"))}
    return out


def report(r: dict[str, dict[str, float]]) -> str:
    lines = ["memory (after a warm-up; RSS from /proc/self/statm, traced from tracemalloc)"]
    for key, label in (("provider_calls", "@track_provider calls over 10 models"),
                       ("sse_streams", "SSE streams opened and closed"),
                       ("random_paths", "requests to random routes"),
                       ("random_models", "calls with random model names")):
        p = r[key]
        lines.append(f"  {int(p['n']):,} {label}: RSS {p['rss_growth_bytes'] / 1e6:+.2f} MB; "
                     f"traced over {int(p['traced_n']):,} more "
                     f"{p['traced_growth_bytes'] / 1e3:+.1f} kB")
    s = r["series"]
    lines.append(f"  series: {int(s['before_random'])} before the random names, "
                 f"{int(s['after_random'])} after (samples, each histogram bucket one); "
                 f"max_label_values={int(s['max_label_values'])}: at most "
                 f"{int(s['widest_route'])} routes and {int(s['widest_model'])} models in any "
                 f"family (the bound plus the overflow value)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
