"""What a decorated call costs, next to the same metrics written by hand, in one process.

Three versions of one provider call run alternately, several rounds each:
``bare`` (no metrics), ``hand`` (prometheus-client by hand: in-flight gauge
inc/dec, request counter, duration histogram, each through ``labels()``) and
``decorated`` (``@track_provider``, which also keeps a span, an exemplar,
the unpriced counter and the log check), with logging as a new user has it:
not opted in. The figure that matters is the
ratio of added costs, ``(decorated - bare) / (hand - bare)``; the median of
the rounds is reported. Streams are measured per item against a bare
generator. Memory: many calls, then the growth of traced allocations.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

import instrument
from instrument import track_provider

TRACE = "0af7651916cd43dd8448eb211c80319c"


def _per_call(fn: Callable[[int], Any], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def _fresh_logging() -> None:
    """Logging as a new user has it: loguru's default stderr handler, the toolkit not opted
    in (so it logs nothing; a line on stderr here would be a bug)."""
    logger.remove()
    logger.configure(patcher=None)
    logger.add(sys.stderr, level="DEBUG")
    logger.disable("instrument")


def _setup() -> tuple[Callable[[int], Any], Callable[[int], Any], Callable[[int], Any]]:
    instrument.configure(registry=CollectorRegistry())
    _fresh_logging()

    hand_registry = CollectorRegistry()
    inflight = Gauge("hand_inflight", "x", ["provider"], registry=hand_registry)
    requests = Counter("hand_requests_total", "x", ["provider", "model", "status"],
                       registry=hand_registry)
    duration = Histogram("hand_duration_seconds", "x", ["provider", "model"],
                         registry=hand_registry)

    def bare(x: int) -> str:
        return "answer"

    def hand(x: int) -> str:
        inflight.labels("openai").inc()
        start = time.perf_counter()
        status = "ok"
        try:
            return bare(x)
        except Exception:
            status = "error"
            raise
        finally:
            inflight.labels("openai").dec()
            requests.labels("openai", "gpt-4o", status).inc()
            duration.labels("openai", "gpt-4o").observe(time.perf_counter() - start)

    decorated = track_provider("openai", "gpt-4o")(bare)
    return bare, hand, decorated


def bench_calls(n: int, rounds: int) -> dict[str, float]:
    bare, hand, decorated = _setup()
    samples: dict[str, list[float]] = {"bare": [], "hand": [], "decorated": []}
    with instrument.use_trace_id(TRACE):  # provider calls run inside a request's trace
        for _ in range(rounds):
            for name, fn in (("bare", bare), ("hand", hand), ("decorated", decorated)):
                samples[name].append(_per_call(fn, n))
    med = {k: statistics.median(v) for k, v in samples.items()}
    added_hand = med["hand"] - med["bare"]
    added_ours = med["decorated"] - med["bare"]
    return {"bare_us": med["bare"], "hand_added_us": added_hand,
            "decorated_added_us": added_ours, "ratio": added_ours / added_hand}


def bench_sync_stream(items: int, rounds: int) -> dict[str, float]:
    def gen() -> Any:
        yield from range(items)

    tracked = track_provider("openai", "gpt-4o")(gen)
    bare_s, ours_s = [], []
    for _ in range(rounds):
        for fn, out in ((gen, bare_s), (tracked, ours_s)):
            start = time.perf_counter()
            for _item in fn():
                pass
            out.append((time.perf_counter() - start) / items * 1e6)
    return {"bare_per_item_us": statistics.median(bare_s),
            "added_per_item_us": statistics.median(ours_s) - statistics.median(bare_s)}


def bench_async_stream(items: int, rounds: int) -> dict[str, float]:
    async def agen() -> Any:
        for i in range(items):
            yield i

    tracked = track_provider("openai", "gpt-4o")(agen)

    async def run() -> dict[str, float]:
        bare_s, ours_s = [], []
        for _ in range(rounds):
            for fn, out in ((agen, bare_s), (tracked, ours_s)):
                start = time.perf_counter()
                async for _item in fn():
                    pass
                out.append((time.perf_counter() - start) / items * 1e6)
        return {"bare_per_item_us": statistics.median(bare_s),
                "added_per_item_us": statistics.median(ours_s) - statistics.median(bare_s)}

    return asyncio.run(run())


def bench_memory(n: int) -> dict[str, float]:
    """Traced memory growth over ``n`` decorated calls after a warm-up (should stay flat)."""
    _, _, decorated = _setup()
    with instrument.use_trace_id(TRACE):
        for i in range(1000):
            decorated(i)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            decorated(i)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    return {"calls": n, "growth_bytes": after - before}


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    n, rounds = (200, 2) if quick else (10000, 7)
    results = {
        "provider_call": bench_calls(n, rounds),
        "sync_stream": bench_sync_stream(100 if quick else 5000, rounds),
        "async_stream": bench_async_stream(100 if quick else 5000, rounds),
        "memory": bench_memory(1000 if quick else 1_000_000),
    }
    return results


def report(results: dict[str, dict[str, float]]) -> str:
    c, s, a, m = (results[k] for k in ("provider_call", "sync_stream", "async_stream", "memory"))
    return "\n".join([
        "decorators (one process, alternating, median of rounds)",
        f"  provider call: bare {c['bare_us']:.2f} us; added by hand-written metrics "
        f"{c['hand_added_us']:.2f} us; added by @track_provider {c['decorated_added_us']:.2f} us"
        f"; ratio {c['ratio']:.2f}x (target <= 1.0x)",
        f"  sync stream: +{s['added_per_item_us']:.3f} us per item (target <= 1 us)",
        f"  async stream: +{a['added_per_item_us']:.3f} us per item (target <= 2 us)",
        f"  memory: {int(m['calls'])} calls grew traced memory by {int(m['growth_bytes'])} bytes",
    ])


if __name__ == "__main__":
    print(report(main()))
