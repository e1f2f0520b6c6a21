"""Tests for ``@track_sse``: how each stream ended, events, heartbeats, and the heartbeat timer.

Outcomes: ``completed`` (exhausted), ``error``, ``client_disconnect`` (the
consumer stopped after the stream had begun, or a server adapter reported the
client gone) and ``cancelled`` (task cancellation without such a report, or a
stream never iterated).
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from sse_starlette import ServerSentEvent

from instrument import HEARTBEAT, get_span_id, get_trace_id, track_sse, use_trace_id
from instrument._http import ServerRequest
from tests.conftest import LogCapture
from tests.helpers import Boom, dropped_async_generator, value

EP = "/events"
OUTCOMES = ("completed", "client_disconnect", "error", "cancelled")
HEX32 = re.compile(r"[0-9a-f]{32}")

pytestmark = pytest.mark.no_internal_errors


def assert_closed(registry: CollectorRegistry, outcome: str, *, events: int,
                  heartbeats: int = 0, endpoint: str = EP) -> None:
    """One stream opened and closed with ``outcome``; the active gauge is back to zero."""
    labels = {"endpoint": endpoint}
    for other in OUTCOMES:
        assert value(registry, "sse_streams_closed_total", outcome=other, **labels) == (
            1 if other == outcome else 0), other
    assert value(registry, "sse_connections_total", **labels) == 1
    assert value(registry, "sse_active_connections", **labels) == 0
    assert value(registry, "sse_stream_duration_seconds_count", **labels) == 1
    assert value(registry, "sse_events_total", **labels) == events
    assert value(registry, "sse_heartbeats_total", **labels) == heartbeats
    assert value(registry, "sse_time_to_first_event_seconds_count", **labels) == (
        1 if events else 0)


def only_stream(logs: LogCapture) -> dict[str, Any]:
    events = logs.events("sse_stream")
    assert len(events) == 1, events
    return events[0]


class Feed:
    """A sync and an async SSE generator with one behaviour: ok, error or block."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.error = Boom("backend failed")
        self.started = anyio.Event()
        self.cleaned = 0

    def sync(self) -> Iterator[str]:
        try:
            yield "data: 1\n\n"
            if self.behaviour == "error":
                raise self.error
            yield "data: 2\n\n"
            yield "data: 3\n\n"
        finally:
            self.cleaned += 1

    async def aio(self) -> AsyncIterator[str]:
        try:
            await anyio.sleep(0)
            yield "data: 1\n\n"
            if self.behaviour == "error":
                raise self.error
            if self.behaviour == "block":
                self.started.set()
                await anyio.sleep_forever()
            yield "data: 2\n\n"
            yield "data: 3\n\n"
        finally:
            self.cleaned += 1


def tracked(kind: str, behaviour: str = "ok", **options: Any) -> tuple[Any, Feed]:
    feed = Feed(behaviour)
    return track_sse(EP, **options)(feed.sync if kind == "sync" else feed.aio), feed


async def drain(stream: Any) -> list[Any]:
    if hasattr(stream, "__aiter__"):
        return [item async for item in stream]
    return list(stream)


# --- every exit path --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_exhausted_stream_is_completed(kind: str, registry: CollectorRegistry,
                                             logs: LogCapture) -> None:
    fn, feed = tracked(kind)
    stream = fn()
    assert value(registry, "sse_active_connections", endpoint=EP) == 1
    assert await drain(stream) == ["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"]
    assert_closed(registry, "completed", events=3)
    assert feed.cleaned == 1
    event = only_stream(logs)
    assert event["level"] == "INFO"
    assert (event["endpoint"], event["outcome"], event["events"], event["heartbeats"]) == (
        EP, "completed", 3, 0)
    assert isinstance(event["duration_ms"], float) and event["duration_ms"] >= 0
    assert event["error_type"] is None
    assert HEX32.fullmatch(event["trace_id"])


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_failing_stream_is_error_and_reraises(kind: str, registry: CollectorRegistry,
                                                    logs: LogCapture) -> None:
    fn, feed = tracked(kind, "error")
    seen: list[Any] = []
    with pytest.raises(Boom) as info:
        if kind == "sync":
            seen.extend(fn())
        else:
            async for item in fn():
                seen.append(item)
    assert info.value is feed.error
    assert seen == ["data: 1\n\n"]
    assert_closed(registry, "error", events=1)
    event = only_stream(logs)
    assert (event["outcome"], event["error_type"]) == ("error", "Boom")


def test_sync_stream_break_is_a_client_disconnect(registry: CollectorRegistry,
                                                  logs: LogCapture) -> None:
    fn, feed = tracked("sync")
    for _ in fn():
        break
    gc.collect()
    assert_closed(registry, "client_disconnect", events=1)
    assert feed.cleaned == 1
    assert only_stream(logs)["outcome"] == "client_disconnect"


def test_sync_stream_close_is_a_client_disconnect(registry: CollectorRegistry) -> None:
    fn, feed = tracked("sync")
    stream = fn()
    next(stream)
    next(stream)
    stream.close()
    stream.close()
    assert_closed(registry, "client_disconnect", events=2)
    assert feed.cleaned == 1


@pytest.mark.anyio
async def test_async_stream_aclose_is_a_client_disconnect(registry: CollectorRegistry,
                                                          logs: LogCapture) -> None:
    fn, feed = tracked("async")
    stream = fn()
    async for _ in stream:
        break
    await stream.aclose()
    await stream.aclose()
    assert_closed(registry, "client_disconnect", events=1)
    assert feed.cleaned == 1
    assert only_stream(logs)["outcome"] == "client_disconnect"


@pytest.mark.anyio
async def test_cancelled_stream_is_cancelled_and_reraised(registry: CollectorRegistry,
                                                          logs: LogCapture) -> None:
    fn, feed = tracked("async", "block")
    reraised = []

    async def serve() -> None:
        try:
            await drain(fn())
        except anyio.get_cancelled_exc_class():
            reraised.append(True)
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await feed.started.wait()
        tg.cancel_scope.cancel()
    assert reraised == [True]
    assert_closed(registry, "cancelled", events=1)
    assert feed.cleaned == 1
    assert only_stream(logs)["outcome"] == "cancelled"


def test_asyncio_task_cancel_is_cancelled(registry: CollectorRegistry) -> None:
    @track_sse(EP)
    async def stream() -> AsyncIterator[str]:
        yield "data: 1\n\n"
        await asyncio.sleep(3600)
        yield "data: 2\n\n"

    async def main() -> None:
        task = asyncio.ensure_future(drain(stream()))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_closed(registry, "cancelled", events=1)


@pytest.mark.anyio
async def test_cancellation_after_the_server_saw_the_client_leave_is_a_disconnect(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    """What the server adapters do: the stream attaches to the request serving it."""
    fn, feed = tracked("async", "block")
    request = ServerRequest("GET", EP, {"x-trace-id": "request-trace-1"})
    token = request.enter()
    try:
        stream = fn()
    finally:
        request.exit(token)
    assert len(request.streams) == 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, stream)
        await feed.started.wait()
        request.client_disconnected()  # http.disconnect or a failed send, as the adapter sees it
        tg.cancel_scope.cancel()
    assert_closed(registry, "client_disconnect", events=1)
    event = only_stream(logs)
    assert (event["outcome"], event["trace_id"]) == ("client_disconnect", "request-trace-1")


def test_stream_opened_after_the_client_left_is_a_disconnect(
        registry: CollectorRegistry) -> None:
    fn, _ = tracked("sync")
    request = ServerRequest("GET", EP, {})
    request.client_disconnected()
    token = request.enter()
    try:
        stream = fn()
    finally:
        request.exit(token)
    del stream
    gc.collect()
    assert_closed(registry, "client_disconnect", events=0)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_unstarted_stream_collected_is_cancelled_once(kind: str,
                                                            registry: CollectorRegistry,
                                                            logs: LogCapture) -> None:
    fn, feed = tracked(kind)
    stream = fn()
    del stream
    gc.collect()
    assert_closed(registry, "cancelled", events=0)
    assert feed.cleaned == 0
    assert len(logs.events("sse_stream")) == 1


def test_unstarted_stream_closed_is_cancelled(registry: CollectorRegistry) -> None:
    """A stream closed before it sent anything was never served (e.g. the response failed)."""
    fn, _ = tracked("sync")
    fn().close()
    assert_closed(registry, "cancelled", events=0)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_half_consumed_stream_collected_is_a_disconnect_once(
        kind: str, registry: CollectorRegistry, logs: LogCapture, anyio_backend: str) -> None:
    fn, feed = tracked(kind)
    stream = fn()
    if kind == "sync":
        next(stream)
        del stream
        gc.collect()
    else:
        await stream.__anext__()
        with dropped_async_generator(anyio_backend):
            del stream
            gc.collect()
        for _ in range(3):
            await anyio.sleep(0)
    assert_closed(registry, "client_disconnect", events=1)
    assert feed.cleaned == 1
    assert len(logs.events("sse_stream")) == 1


class Channel:
    @track_sse("/a")
    def sync(self, n: int) -> Iterator[str]:
        for i in range(n):
            yield f"data: {i}\n\n"

    @classmethod
    @track_sse("/b")
    async def klass(cls, n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield f"data: {cls.__name__}{i}\n\n"

    @staticmethod
    @track_sse("/c")
    async def static(n: int) -> AsyncIterator[str]:
        for i in range(n):
            yield f"data: {i}\n\n"


@pytest.mark.anyio
async def test_methods_classmethods_and_staticmethods(registry: CollectorRegistry) -> None:
    ch = Channel()
    assert list(ch.sync(2)) == ["data: 0\n\n", "data: 1\n\n"]
    assert await drain(Channel.klass(1)) == ["data: Channel0\n\n"]
    assert await drain(ch.static(3)) == ["data: 0\n\n", "data: 1\n\n", "data: 2\n\n"]
    for endpoint, events in (("/a", 2), ("/b", 1), ("/c", 3)):
        assert_closed(registry, "completed", events=events, endpoint=endpoint)


def test_only_generators_can_be_tracked() -> None:
    def returns_a_generator() -> Iterator[str]:
        return iter(["data: 1\n\n"])

    async def coroutine() -> None:
        pass

    def sync_gen() -> Iterator[str]:
        yield ""

    with pytest.raises(TypeError, match="generator function"):
        track_sse(EP)(returns_a_generator)
    with pytest.raises(TypeError, match="generator function"):
        track_sse(EP)(coroutine)
    with pytest.raises(TypeError, match="async generator"):
        track_sse(EP, heartbeat=1.0)(sync_gen)
    with pytest.raises(ValueError, match="endpoint"):
        track_sse("")
    for bad in (0, -1.0, "5"):
        with pytest.raises(ValueError, match="heartbeat"):
            track_sse(EP, heartbeat=bad)  # type: ignore[arg-type]


# --- heartbeats ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_comments_sentinel_and_comment_events_are_heartbeats(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    @track_sse(EP)
    async def stream() -> AsyncIterator[Any]:
        yield ": keep-alive\n\n"
        yield b": ping\n\n"
        yield HEARTBEAT
        yield ServerSentEvent(comment="ping")
        yield {"comment": "ping"}
        yield "data: 1\n\n"
        yield b"data: 2\n\n"
        yield ServerSentEvent(data="3", event="token")
        yield {"data": "4"}
        yield ServerSentEvent(data="5", comment="with data it is an event")

    out = await drain(stream())
    assert out[2] == ": heartbeat\n\n"  # the sentinel goes out as a comment
    assert HEARTBEAT not in out
    assert_closed(registry, "completed", events=5, heartbeats=5)
    event = only_stream(logs)
    assert (event["events"], event["heartbeats"]) == (5, 5)


def test_heartbeat_item_replaces_the_sentinel(registry: CollectorRegistry) -> None:
    ping = ServerSentEvent(comment="ping")

    @track_sse(EP, heartbeat_item=ping)
    def stream() -> Iterator[Any]:
        yield HEARTBEAT
        yield "data: x\n\n"

    assert list(stream()) == [ping, "data: x\n\n"]
    assert_closed(registry, "completed", events=1, heartbeats=1)


def test_time_to_first_event_excludes_heartbeats(registry: CollectorRegistry) -> None:
    @track_sse("/quiet")
    def quiet() -> Iterator[Any]:
        yield HEARTBEAT
        yield ": still here\n\n"

    list(quiet())
    assert_closed(registry, "completed", events=0, heartbeats=2, endpoint="/quiet")
    assert value(registry, "sse_time_to_first_event_seconds_count", endpoint="/quiet") == 0


# --- the heartbeat timer (asyncio) ---------------------------------------------------


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current}


class SlowSource:
    """An async source that stays silent until the consumer has seen ``wait_for`` heartbeats.

    Deterministic: it advances only when told, so no assertion depends on timing.
    """

    def __init__(self, items: int = 3) -> None:
        self.items = items
        self.gate = asyncio.Event()
        self.interrupted = 0  # cancellations seen while producing an item
        self.cleaned = 0
        self.produced: list[str] = []

    async def run(self) -> AsyncGenerator[str, None]:
        try:
            for i in range(self.items):
                try:
                    await self.gate.wait()
                except asyncio.CancelledError:
                    self.interrupted += 1
                    raise
                self.gate.clear()
                item = f"data: {i}\n\n"
                self.produced.append(item)
                yield item
        finally:
            self.cleaned += 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeats_fill_silence_without_losing_or_repeating_items(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    before = other_tasks()
    source = SlowSource(items=4)
    stream = track_sse(EP, heartbeat=0.05)(source.run)()
    received: list[str] = []
    beats_in_a_row = 0
    async for item in stream:
        received.append(item)
        if item == ": heartbeat\n\n":
            beats_in_a_row += 1
            if beats_in_a_row == 2:  # two heartbeats in the silence, then the next item
                source.gate.set()
        else:
            beats_in_a_row = 0
    events = [i for i in received if not i.startswith(":")]
    assert events == ["data: 0\n\n", "data: 1\n\n", "data: 2\n\n", "data: 3\n\n"]
    assert events == source.produced
    heartbeats = len(received) - len(events)
    assert heartbeats == 8  # two in the silence before each of the four items
    assert source.interrupted == 0  # heartbeats never cancelled the source mid-item
    assert source.cleaned == 1
    assert_closed(registry, "completed", events=4, heartbeats=heartbeats)
    assert other_tasks() == before
    event = only_stream(logs)
    assert (event["events"], event["heartbeats"]) == (4, 8)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_aclose_during_silence_leaves_no_task(
        registry: CollectorRegistry) -> None:
    before = other_tasks()
    source = SlowSource()
    source.gate.set()
    stream = track_sse(EP, heartbeat=0.01)(source.run)()
    assert await stream.__anext__() == "data: 0\n\n"
    assert await stream.__anext__() == ": heartbeat\n\n"  # the source is waiting now
    assert other_tasks() != before  # its pending step survives the heartbeat
    await stream.aclose()
    assert other_tasks() == before
    assert source.cleaned == 1
    assert_closed(registry, "client_disconnect", events=1, heartbeats=1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_cancelled_during_silence_leaves_no_task(
        registry: CollectorRegistry) -> None:
    before = other_tasks()
    source = SlowSource()
    source.gate.set()
    stream = track_sse(EP, heartbeat=0.01)(source.run)()
    got: list[str] = []
    reraised = []

    async def consume() -> None:
        try:
            async for item in stream:
                got.append(item)
        except asyncio.CancelledError:
            reraised.append(True)
            raise

    task = asyncio.ensure_future(consume())
    while ": heartbeat\n\n" not in got:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reraised == [True]
    assert other_tasks() == before
    assert source.interrupted == 1 and source.cleaned == 1
    assert got[0] == "data: 0\n\n"
    assert_closed(registry, "cancelled", events=1, heartbeats=got.count(": heartbeat\n\n"))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_in_a_cancelled_scope_leaves_no_task(
        registry: CollectorRegistry) -> None:
    """anyio cancels level-triggered, as Starlette's task group does when the client leaves."""
    before = other_tasks()
    source = SlowSource()
    source.gate.set()
    stream = track_sse(EP, heartbeat=0.01)(source.run)()
    got: list[str] = []
    seen_heartbeat = anyio.Event()

    async def consume() -> None:
        async for item in stream:
            got.append(item)
            if item.startswith(":"):
                seen_heartbeat.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await seen_heartbeat.wait()
        tg.cancel_scope.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert other_tasks() == before
    assert source.interrupted == 1 and source.cleaned == 1
    assert_closed(registry, "cancelled", events=1, heartbeats=got.count(": heartbeat\n\n"))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_dropped_during_silence_leaves_no_task(
        registry: CollectorRegistry) -> None:
    before = other_tasks()
    source = SlowSource()
    source.gate.set()
    stream = track_sse(EP, heartbeat=0.01)(source.run)()
    await stream.__anext__()
    await stream.__anext__()
    del stream
    gc.collect()
    for _ in range(5):
        await asyncio.sleep(0)
    assert other_tasks() == before
    assert source.cleaned == 1
    assert_closed(registry, "client_disconnect", events=1, heartbeats=1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_collected_in_another_thread_cancels_safely(
        registry: CollectorRegistry) -> None:
    """Its pending step is cancelled through its own loop (debug mode rejects anything else)."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    try:
        before = other_tasks()
        source = SlowSource()
        source.gate.set()
        holder = [track_sse(EP, heartbeat=0.01)(source.run)()]
        await holder[0].__anext__()
        await holder[0].__anext__()  # a heartbeat: the source's next step is pending
        worker = threading.Thread(target=holder.clear)  # the last reference dies there
        worker.start()
        worker.join()
        for _ in range(5):
            await asyncio.sleep(0)
        assert other_tasks() == before
        assert source.interrupted == 1 and source.cleaned == 1
    finally:
        loop.set_debug(False)
    assert_closed(registry, "client_disconnect", events=1, heartbeats=1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_passes_source_errors_through(
        registry: CollectorRegistry) -> None:
    before = other_tasks()
    err = Boom("source failed")

    @track_sse(EP, heartbeat=0.01)
    async def failing() -> AsyncIterator[str]:
        yield "data: 0\n\n"
        await asyncio.sleep(0)
        raise err

    with pytest.raises(Boom) as info:
        await drain(failing())
    assert info.value is err
    assert other_tasks() == before
    assert_closed(registry, "error", events=1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_heartbeat_stream_keeps_the_creators_trace(logs: LogCapture) -> None:
    seen: list[str | None] = []

    @track_sse(EP, heartbeat=0.01)
    async def stream() -> AsyncIterator[str]:
        for i in range(3):
            seen.append(get_trace_id())
            await asyncio.sleep(0)
            yield f"data: {i}\n\n"

    with use_trace_id("request-trace"):
        s = stream()
    with use_trace_id("consumer-trace"):
        assert len(await drain(s)) == 3
        assert get_trace_id() == "consumer-trace"
    assert seen == ["request-trace"] * 3
    assert only_stream(logs)["trace_id"] == "request-trace"


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_heartbeat_timer_on_trio_raises_a_clear_error(registry: CollectorRegistry,
                                                           logs: LogCapture) -> None:
    started = []

    @track_sse(EP, heartbeat=0.01)
    async def stream() -> AsyncIterator[str]:
        started.append(True)
        yield "data: 0\n\n"

    with pytest.raises(RuntimeError, match=r"needs asyncio.*instrument\.HEARTBEAT"):
        await drain(stream())
    assert started == []  # the source was never touched
    assert_closed(registry, "error", events=0)
    assert only_stream(logs)["error_type"] == "RuntimeError"


# --- trace context -----------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_keeps_the_request_trace_in_every_step(logs: LogCapture) -> None:
    seen: list[tuple[str | None, str | None]] = []

    @track_sse(EP)
    async def stream() -> AsyncGenerator[str, None]:
        for i in range(3):
            seen.append((get_trace_id(), get_span_id()))
            await anyio.sleep(0)
            yield f"data: {i}\n\n"

    with use_trace_id("request-trace", "request-span"):
        s = stream()

    async def step(n: int) -> None:
        with use_trace_id(f"server-{n}"):
            await s.__anext__()
            assert get_trace_id() == f"server-{n}"

    for n in range(3):  # a framework iterating from its own tasks
        async with anyio.create_task_group() as tg:
            tg.start_soon(step, n)
    await s.aclose()
    assert {t for t, _ in seen} == {"request-trace"}
    (span,) = {s for _, s in seen}
    assert span != "request-span"
    assert only_stream(logs)["trace_id"] == "request-trace"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_source_that_ends_while_the_stream_is_closed_leaves_no_lost_exception(
        registry: CollectorRegistry) -> None:
    """The pending step finished (StopAsyncIteration) before aclose(): its outcome is retrieved."""
    lost: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: lost.append(ctx))

    @track_sse("/ends", heartbeat=0.02)
    async def events() -> AsyncIterator[str]:
        await asyncio.sleep(0.05)
        return
        yield "never"

    stream = events()
    assert await stream.__anext__() == ": heartbeat\n\n"
    await asyncio.sleep(0.1)  # the source has ended, unseen, in the pending step
    await stream.aclose()
    del stream
    gc.collect()
    await asyncio.sleep(0)
    assert lost == []
    assert value(registry, "sse_active_connections", endpoint="/ends") == 0
