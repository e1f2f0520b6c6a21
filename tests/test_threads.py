"""Tests for carrying the trace into threads: only when asked, through instrument.context."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from instrument import context, get_span_id, get_trace_id, trace_span, use_trace_id

needs_empty_thread_context = pytest.mark.skipif(
    bool(getattr(sys.flags, "thread_inherit_context", False)),
    reason="this interpreter starts threads with a copy of the caller's context")


def ids() -> tuple[str | None, str | None]:
    return get_trace_id(), get_span_id()


def run_in_plain_thread(fn: object) -> list[object]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()))  # type: ignore[operator]
    thread.start()
    thread.join()
    return out


@needs_empty_thread_context
def test_a_plain_thread_pool_does_not_carry_the_trace() -> None:
    """Documented by test: ``ThreadPoolExecutor.submit`` runs outside the caller's trace."""
    with trace_span("caller"), ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(ids).result() == (None, None)


@needs_empty_thread_context
def test_a_plain_thread_does_not_carry_the_trace() -> None:
    with trace_span("caller"):
        assert run_in_plain_thread(ids) == [(None, None)]


def test_submit_carries_the_trace_and_span_into_the_pool() -> None:
    with trace_span("caller") as span, ThreadPoolExecutor(max_workers=2) as pool:
        future = context.submit(pool, lambda a, b=0: (ids(), a + b), 1, b=2)
        assert future.result() == ((span.trace_id, span.span_id), 3)


def test_wrap_carries_the_trace_into_a_thread() -> None:
    with use_trace_id("req-thread") as trace_id:
        wrapped = context.wrap(ids)
    assert wrapped.__name__ == "ids"
    # captured when wrapped, so it holds even when called after the trace ended
    assert run_in_plain_thread(wrapped) == [(trace_id, None)]


def test_spans_opened_in_a_wrapped_thread_are_children_and_do_not_leak_back() -> None:
    def work() -> tuple[str, str | None]:
        with trace_span("in thread") as inner:
            return inner.trace_id, inner.parent_span_id

    with trace_span("caller") as outer:
        (result,) = run_in_plain_thread(context.wrap(work))
        assert result == (outer.trace_id, outer.span_id)
        assert get_span_id() == outer.span_id


def test_one_wrapped_function_can_run_in_many_threads_at_once() -> None:
    barrier = threading.Barrier(4)

    def work() -> str | None:
        barrier.wait(timeout=10)  # all four are inside the context at the same time
        with trace_span("parallel"):
            return get_trace_id()

    with use_trace_id("shared") as trace_id, ThreadPoolExecutor(max_workers=4) as pool:
        wrapped = context.wrap(work)
        futures = [pool.submit(wrapped) for _ in range(4)]
        assert [f.result(timeout=10) for f in futures] == [trace_id] * 4


@pytest.mark.anyio
async def test_run_in_thread_carries_the_trace_from_async_code() -> None:
    async with trace_span("async caller") as span:
        result = await context.run_in_thread(lambda x: (ids(), x * 2), 21)
    assert result == ((span.trace_id, span.span_id), 42)
