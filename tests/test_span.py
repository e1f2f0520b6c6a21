"""Tests for trace_span: nesting, metrics with exemplars, DEBUG lines, decorators, exceptions."""

from __future__ import annotations

import inspect
import traceback
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

from instrument import Span, _metrics, _span, get_span_id, get_trace_id, trace_span, use_trace_id
from tests.conftest import LogCapture
from tests.helpers import value


def span_samples(registry: CollectorRegistry, suffix: str) -> list[Sample]:
    return [s for family in registry.collect() if family.name == "span_duration_seconds"
            for s in family.samples if s.name == "span_duration_seconds" + suffix]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """A deterministic perf_counter for spans: returns the queued readings in order."""
    readings: list[float] = []
    monkeypatch.setattr(_span, "perf_counter", lambda: readings.pop(0))
    yield readings
    assert readings == [], "not every queued clock reading was used"


# --- nesting and traces ------------------------------------------------------


def test_a_span_opened_inside_another_is_its_child_in_the_same_trace() -> None:
    with trace_span("outer") as outer:
        assert get_trace_id() == outer.trace_id
        assert get_span_id() == outer.span_id
        with trace_span("inner") as inner:
            assert inner.trace_id == outer.trace_id
            assert inner.parent_span_id == outer.span_id
            assert inner.span_id != outer.span_id
            assert get_span_id() == inner.span_id
            with trace_span("innermost") as innermost:
                assert innermost.parent_span_id == inner.span_id
        assert get_span_id() == outer.span_id
    assert outer.parent_span_id is None
    assert get_trace_id() is None
    assert get_span_id() is None


def test_a_root_span_starts_a_new_trace_and_counts_it(registry: CollectorRegistry) -> None:
    with trace_span("first") as first:
        with trace_span("nested"):
            pass
    with trace_span("second") as second:
        pass
    assert first.trace_id != second.trace_id
    assert value(registry, "trace_requests_total") == 2


def test_a_span_inside_use_trace_id_joins_that_trace_without_counting_another(
        registry: CollectorRegistry) -> None:
    with use_trace_id("req-9"), trace_span("work") as span:
        assert span.trace_id == "req-9"
        assert span.parent_span_id is None
    assert value(registry, "trace_requests_total") == 1


def test_span_exposes_name_attributes_and_set_attribute() -> None:
    with trace_span("retrieve", k=5, index="docs") as span:
        span.set_attribute("hits", 3)
    assert isinstance(span, Span)
    assert span.name == "retrieve"
    assert span.attributes == {"k": 5, "index": "docs", "hits": 3}
    assert "retrieve" in repr(span)


def test_set_attribute_on_one_use_does_not_leak_into_the_next() -> None:
    cm = trace_span("step", kind="x")
    with cm as first:
        first.set_attribute("hits", 3)
    with cm as second:
        pass
    assert first.attributes == {"kind": "x", "hits": 3}
    assert second.attributes == {"kind": "x"}


# --- metrics and logs ----------------------------------------------------------


def test_span_duration_is_observed_with_a_trace_id_exemplar(registry: CollectorRegistry) -> None:
    with trace_span("retrieve") as span:
        pass
    assert value(registry, "span_duration_seconds_count", span="retrieve") == 1
    assert value(registry, "span_duration_seconds_sum", span="retrieve") > 0
    exemplars = [s.exemplar for s in span_samples(registry, "_bucket")
                 if s.exemplar is not None]
    assert len(exemplars) == 1
    assert exemplars[0].labels == {"trace_id": span.trace_id}
    assert exemplars[0].value == pytest.approx(
        value(registry, "span_duration_seconds_sum", span="retrieve"))


def test_span_duration_uses_the_clock_exactly(clock: list[float], registry: CollectorRegistry,
                                              logs: LogCapture) -> None:
    clock.extend([100.0, 100.25])
    with trace_span("timed"):
        pass
    assert value(registry, "span_duration_seconds_sum", span="timed") == 0.25
    assert value(registry, "span_duration_seconds_bucket", span="timed", le="0.1") == 0
    assert value(registry, "span_duration_seconds_bucket", span="timed", le="0.25") == 1
    (line,) = logs.events("span")
    assert line["duration_ms"] == 250.0


def test_a_closed_span_logs_a_debug_line_with_duration_and_outcome(logs: LogCapture) -> None:
    with trace_span("retrieve", k=5) as span:
        pass
    (line,) = logs.events("span")
    assert line["level"] == "DEBUG"
    assert line["span"] == "retrieve"
    assert line["outcome"] == "ok"
    assert line["error_type"] is None
    assert line["duration_ms"] > 0
    assert line["trace_id"] == span.trace_id
    assert line["span_id"] == span.span_id
    assert line["parent_span_id"] is None
    assert line["attributes"] == {"k": 5}


def test_a_failed_span_logs_outcome_error_with_the_exception_type(logs: LogCapture) -> None:
    with pytest.raises(ValueError), trace_span("parse"):
        raise ValueError("bad input")
    (line,) = logs.events("span")
    assert line["outcome"] == "error"
    assert line["error_type"] == "ValueError"


def test_span_attributes_are_redacted_in_the_debug_line(logs: LogCapture) -> None:
    with trace_span("call", api_key="sk-live-123", model="gpt-4o"):
        pass
    (line,) = logs.events("span")
    assert line["attributes"] == {"api_key": "[REDACTED]", "model": "gpt-4o"}
    assert "sk-live-123" not in logs.text


@pytest.mark.anyio
async def test_a_cancelled_span_logs_outcome_cancelled(logs: LogCapture) -> None:
    with anyio.CancelScope() as scope:
        async with trace_span("waiting"):
            scope.cancel()
            await anyio.sleep_forever()
    (line,) = logs.events("span")
    assert line["outcome"] == "cancelled"
    assert get_trace_id() is None


def test_bookkeeping_failures_do_not_reach_the_user(monkeypatch: pytest.MonkeyPatch,
                                                    registry: CollectorRegistry) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("metric store broke")

    child = _metrics.current().span_duration.child("work").child
    monkeypatch.setattr(child, "observe", broken)
    with trace_span("work") as span:
        result = 42
    assert result == 42
    assert get_span_id() is None  # the context was restored anyway
    assert span.trace_id
    assert value(registry, "instrument_internal_errors_total", where="span") == 1


# --- async with ------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_with_nests_and_restores_across_awaits() -> None:
    async with trace_span("outer") as outer:
        await anyio.lowlevel.checkpoint()
        async with trace_span("inner") as inner:
            await anyio.lowlevel.checkpoint()
            assert get_span_id() == inner.span_id
        assert inner.parent_span_id == outer.span_id
        assert get_span_id() == outer.span_id
    assert get_trace_id() is None


# --- decorators ------------------------------------------------------------------


def test_decorated_sync_function_runs_each_call_in_its_own_span(
        registry: CollectorRegistry) -> None:
    seen: list[tuple[str | None, str | None]] = []

    @trace_span("handler")
    def handler(x: int, *, y: int = 1) -> int:
        """Add things."""
        seen.append((get_trace_id(), get_span_id()))
        return x + y

    assert handler(1, y=2) == 3
    assert handler(5) == 6
    assert handler.__name__ == "handler"
    assert handler.__doc__ == "Add things."
    assert inspect.signature(handler) == inspect.signature(handler.__wrapped__)  # type: ignore[attr-defined]
    assert len({span_id for _, span_id in seen}) == 2
    assert None not in {trace_id for trace_id, _ in seen}
    assert value(registry, "span_duration_seconds_count", span="handler") == 2
    assert value(registry, "trace_requests_total") == 2
    assert get_trace_id() is None


def test_decorated_function_called_inside_a_span_is_its_child() -> None:
    parents: list[str | None] = []

    @trace_span("child")
    def child() -> None:
        with trace_span("probe") as probe:
            parents.append(probe.parent_span_id)
        parents.append(get_trace_id())

    with trace_span("parent") as parent:
        child()
    span_of_child, trace = parents
    assert trace == parent.trace_id
    assert span_of_child not in (None, parent.span_id)  # probe's parent is the child span


@pytest.mark.anyio
async def test_decorated_async_function_is_still_a_coroutine_function_and_times_the_await(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    @trace_span("fetch")
    async def fetch(n: int) -> int:
        """Fetch n."""
        await anyio.lowlevel.checkpoint()
        assert get_span_id() is not None
        return n * 2

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch n."
    assert await fetch(2) == 4
    assert await fetch(3) == 6
    lines = logs.events("span")
    assert [line["span"] for line in lines] == ["fetch", "fetch"]
    assert lines[0]["span_id"] != lines[1]["span_id"]
    assert value(registry, "span_duration_seconds_count", span="fetch") == 2


@pytest.mark.anyio
async def test_concurrent_calls_of_a_decorated_coroutine_get_separate_spans() -> None:
    seen: dict[int, set[str | None]] = {}

    @trace_span("work")
    async def work(i: int) -> None:
        seen[i] = set()
        for _ in range(3):
            seen[i].add(get_span_id())
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(work, i)
    assert all(len(ids) == 1 and None not in ids for ids in seen.values())
    assert len({next(iter(ids)) for ids in seen.values()}) == 20


def test_decorating_twice_nests_two_spans(registry: CollectorRegistry) -> None:
    @trace_span("outer")
    @trace_span("inner")
    def f() -> str | None:
        return get_span_id()

    assert f() is not None
    assert value(registry, "span_duration_seconds_count", span="outer") == 1
    assert value(registry, "span_duration_seconds_count", span="inner") == 1


# --- exceptions --------------------------------------------------------------------


class Boom(Exception):
    pass


def test_the_users_exception_passes_through_a_decorator_unchanged() -> None:
    raised: list[BaseException] = []

    @trace_span("fails")
    def fails() -> None:
        err = Boom("original")
        raised.append(err)
        raise err

    with pytest.raises(Boom) as info:
        fails()
    assert info.value is raised[0]
    assert info.value.args == ("original",)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert frames[-1] == "fails"  # the raise site is still the last frame
    assert info.value.__context__ is None and info.value.__cause__ is None


@pytest.mark.anyio
async def test_the_users_exception_passes_through_an_async_decorator_unchanged() -> None:
    raised: list[BaseException] = []

    @trace_span("afails")
    async def afails() -> None:
        await anyio.lowlevel.checkpoint()
        err = Boom("async original")
        raised.append(err)
        raise err

    with pytest.raises(Boom) as info:
        await afails()
    assert info.value is raised[0]
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == "afails"
    assert get_span_id() is None


def test_the_users_exception_passes_through_with_unchanged() -> None:
    err = Boom("in a with block")
    with pytest.raises(Boom) as info, trace_span("block"):
        raise err
    assert info.value is err
    assert get_trace_id() is None


# --- reuse -------------------------------------------------------------------------


def test_a_span_object_is_not_re_entrant() -> None:
    cm = trace_span("once")
    with cm as outer:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            with cm:
                pass
        assert get_span_id() == outer.span_id  # the failed entry changed nothing
    assert get_span_id() is None


def test_a_span_object_can_be_used_again_after_it_closed() -> None:
    cm = trace_span("again")
    with cm as first:
        pass
    with cm as second:
        pass
    assert first.span_id != second.span_id


def test_decorated_generators_keep_their_span_for_the_whole_stream(
        registry: CollectorRegistry) -> None:
    seen = []

    @trace_span("stream")
    def numbers() -> Any:
        for i in range(3):
            seen.append((get_trace_id(), get_span_id()))
            yield i

    with trace_span("request") as request:
        assert list(numbers()) == [0, 1, 2]
    assert len({s for s in seen}) == 1  # one span, current at every step
    assert seen[0][0] == request.trace_id and seen[0][1] != request.span_id
    assert value(registry, "span_duration_seconds_count", span="stream") == 1


@pytest.mark.anyio
async def test_decorated_async_generators_count_errors_per_span(
        registry: CollectorRegistry) -> None:
    @trace_span("agen")
    async def failing() -> Any:
        yield 1
        raise KeyError("gone")

    with pytest.raises(KeyError):
        async for _ in failing():
            pass
    assert value(registry, "span_errors_total", span="agen") == 1
    assert value(registry, "span_duration_seconds_count", span="agen") == 1
