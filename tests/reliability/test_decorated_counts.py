"""Decorated calls in bulk: 32 threads x 10,000 calls, 10,000 concurrent async calls on
asyncio and on trio. Every counter and histogram count is exact; each call sees its own
trace ID; nothing is left in flight."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from instrument import get_trace_id, trace_span, track_provider, use_trace_id
from tests.helpers import value

pytestmark = [pytest.mark.no_internal_errors, pytest.mark.timeout(300)]

THREADS = 32
CALLS_PER_THREAD = 10_000
TASKS = 10_000
ANSWER = {"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def read(registry: CollectorRegistry, provider: str) -> dict[str, float]:
    """What the registry holds for the calls of ``provider``, read back."""
    def v(name: str, **labels: str) -> float:
        return value(registry, name, **labels)

    return {
        "provider_requests_total": v("provider_requests_total", provider=provider, model="m",
                                     status="ok"),
        "provider_request_duration_seconds_count":
            v("provider_request_duration_seconds_count", provider=provider, model="m"),
        "provider_tokens_input": v("provider_tokens_total", provider=provider, model="m",
                                   type="input"),
        "provider_tokens_output": v("provider_tokens_total", provider=provider, model="m",
                                    type="output"),
        "provider_inflight_requests": v("provider_inflight_requests", provider=provider),
        "span_duration_seconds_count": v("span_duration_seconds_count", span="work"),
        "trace_requests_total": v("trace_requests_total"),
        "span_duration_seconds_inf_bucket": v("span_duration_seconds_bucket", span="work",
                                              le="+Inf"),
    }


def expected(calls: int) -> dict[str, float]:
    return {"provider_requests_total": calls, "provider_request_duration_seconds_count": calls,
            "provider_tokens_input": 3 * calls, "provider_tokens_output": 2 * calls,
            "provider_inflight_requests": 0, "span_duration_seconds_count": calls,
            "trace_requests_total": calls, "span_duration_seconds_inf_bucket": calls}


def test_32_threads_x_10000_calls_count_exactly(registry: CollectorRegistry) -> None:
    @track_provider("threaded")
    def call(model: str) -> dict[str, Any]:
        return ANSWER

    crossed: list[str] = []
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        start.wait(30)
        for i in range(CALLS_PER_THREAD):
            mine = f"th-{t}-{i}"
            with use_trace_id(mine), trace_span("work"):
                call("m")
                if get_trace_id() != mine:
                    crossed.append(f"{mine} saw {get_trace_id()}")

    threads = [threading.Thread(target=worker, args=(t,), name=f"reliability-{t}")
               for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads)
    assert crossed == []
    assert read(registry, "threaded") == expected(THREADS * CALLS_PER_THREAD)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_10000_concurrent_async_calls_count_exactly(registry: CollectorRegistry,
                                                    backend: str) -> None:
    provider = f"async-{backend}"
    started = 0
    all_started = anyio.Event()
    peak: list[float] = []

    @track_provider(provider)
    async def call(model: str) -> dict[str, Any]:
        nonlocal started
        started += 1
        if started == TASKS:  # every call is in flight at once before any returns
            peak.append(value(registry, "provider_inflight_requests", provider=provider))
            all_started.set()
        with anyio.fail_after(60):
            await all_started.wait()
        return ANSWER

    crossed: list[str] = []

    async def one(i: int) -> None:
        mine = f"{backend}-{i}"
        with use_trace_id(mine), trace_span("work"):
            await call("m")
            await anyio.sleep(0)
            if get_trace_id() != mine:
                crossed.append(f"{mine} saw {get_trace_id()}")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for i in range(TASKS):
                group.start_soon(one, i)

    anyio.run(main, backend=backend)
    assert crossed == []
    assert peak == [TASKS]
    assert read(registry, provider) == expected(TASKS)
