"""Tests for the wrapping engine: one call's lifecycle on every kind of callable and exit path.

A recording observer shows what the engine guarantees to every decorator: the
kind is decided once, ``end`` runs exactly once whichever way the call ends,
every ``enter`` is undone by a ``leave``, and the user's exception is re-raised
untouched. The decorators' own tests check the metrics and logs built on this.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from fastapi import FastAPI, Header
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from instrument import (
    get_span_id,
    get_trace_id,
    record_usage,
    track_cache,
    track_provider,
    track_sse,
    use_trace_id,
)
from instrument._engine import (
    CANCELLED,
    CLOSED,
    ERROR,
    OK,
    AsyncStream,
    Observer,
    SyncStream,
    instrument_callable,
    kind_of,
    outcome_for,
)
from instrument._metrics import current
from instrument._observe import TracedObserver
from tests.helpers import Boom, dropped_async_generator, value

pytestmark = pytest.mark.no_internal_errors


def internal_errors(registry: CollectorRegistry) -> float:
    return sum(s.value for metric in registry.collect()
               if metric.name == "instrument_internal_errors"
               for s in metric.samples if s.name.endswith("_total"))


class Recorder(Observer):
    """Records every hook call; checks that enter/leave stay balanced."""

    def __init__(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.instance = instance
        self.args = args
        self.kwargs = kwargs
        self.open = 0
        self.steps = 0
        self.items: list[Any] = []
        self.ends: list[tuple[str, BaseException | None, Any]] = []

    def enter(self) -> Any:
        self.open += 1
        self.steps += 1
        return self.steps

    def leave(self, state: Any) -> None:
        assert state == self.steps
        self.open -= 1

    def item(self, value: Any) -> Any:
        self.items.append(value)
        return value

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        assert self.open <= 1  # ends inside or after a step, never with two open
        self.ends.append((outcome, exc, result))


def observed(fn: Callable[..., Any]) -> tuple[Any, list[Recorder]]:
    """``fn`` wrapped by the engine, and the list its observers are appended to."""
    made: list[Recorder] = []

    def factory(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Recorder:
        obs = Recorder(instance, args, kwargs)
        made.append(obs)
        return obs

    return instrument_callable(fn, factory), made


def only(made: list[Recorder]) -> Recorder:
    """The one observer of the test; its call ended exactly once and left nothing entered."""
    assert len(made) == 1
    obs = made[0]
    assert len(obs.ends) == 1, obs.ends
    assert obs.ended
    assert obs.open == 0
    return obs


def frames(exc: BaseException) -> list[str]:
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


# --- the kind is decided once, at decoration ---------------------------------------


def plain(x: int) -> int:
    return x


async def coro(x: int) -> int:
    return x


def gen(x: int) -> Iterator[int]:
    yield x


async def agen(x: int) -> AsyncIterator[int]:
    yield x


KINDS = [(plain, "function"), (coro, "coroutine"), (gen, "generator"), (agen, "asyncgen")]


@pytest.mark.parametrize(("fn", "kind"), KINDS)
def test_kind_of_each_callable(fn: Callable[..., Any], kind: str) -> None:
    assert kind_of(fn) == kind
    assert kind_of(staticmethod(fn)) == kind
    assert kind_of(classmethod(fn)) == kind


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0)
        return x


class SyncCallable:
    def __call__(self, x: int) -> int:
        return x


def test_kind_of_callable_objects_follows_their_call_method() -> None:
    assert kind_of(AsyncCallable()) == "coroutine"
    assert kind_of(SyncCallable()) == "function"
    assert kind_of(AsyncCallable) == "function"  # calling the class makes an instance
    assert kind_of(functools.partial(coro, 1)) == "coroutine"
    assert kind_of(functools.partial(plain, 1)) == "function"
    wrapped, made = observed(AsyncCallable())
    assert asyncio.run(wrapped(4)) == 4
    assert only(made).ends == [(OK, None, 4)]  # ended after the await, with its result


def test_sync_wrapper_never_hides_a_coroutine() -> None:
    """The classic bug: a sync wrapper around ``async def`` times only coroutine creation."""
    wrapped, made = observed(coro)
    pending = wrapped(1)
    assert inspect.iscoroutine(pending)
    assert made == []  # the call starts when the coroutine runs, not when it is created
    assert asyncio.run(pending) == 1
    assert only(made).ends == [(OK, None, 1)]


def test_outcome_for_maps_exceptions() -> None:
    assert outcome_for(GeneratorExit()) == CLOSED
    assert outcome_for(asyncio.CancelledError()) == CANCELLED
    assert outcome_for(KeyboardInterrupt()) == CANCELLED
    assert outcome_for(Boom()) == ERROR


# --- introspection: every decorator, every kind ---------------------------------------

DECORATORS: dict[str, Callable[[Callable[..., Any]], Any]] = {
    "provider": track_provider("openai", "gpt-4o"),
    "sse": track_sse("/events"),
    "cache": track_cache("kv"),
    "engine": lambda fn: instrument_callable(fn, Recorder),
}
# what each decorator is for: SSE bodies are generators, cache lookups are not
APPLIES = {"provider": KINDS, "engine": KINDS, "sse": KINDS[2:], "cache": KINDS[:2]}


def documented_plain(prompt: str, *, model: str = "gpt-4o", n: int = 1) -> str:
    """Plain docstring."""
    return prompt


async def documented_coro(prompt: str, *, model: str = "gpt-4o", n: int = 1) -> str:
    """Coroutine docstring."""
    return prompt


def documented_gen(prompt: str, *, model: str = "gpt-4o", n: int = 1) -> Iterator[str]:
    """Generator docstring."""
    yield prompt


async def documented_agen(prompt: str, *, model: str = "gpt-4o", n: int = 1
                          ) -> AsyncIterator[str]:
    """Async generator docstring."""
    yield prompt


DOCUMENTED = {"function": documented_plain, "coroutine": documented_coro,
              "generator": documented_gen, "asyncgen": documented_agen}


@pytest.mark.parametrize(("decorator", "kind"), [
    (decorator, kind) for decorator, kinds in APPLIES.items() for _, kind in kinds])
def test_decorated_callable_keeps_signature_and_introspection(decorator: str,
                                                              kind: str) -> None:
    fn = DOCUMENTED[kind]
    wrapped = DECORATORS[decorator](fn)
    assert inspect.signature(wrapped) == inspect.signature(fn)
    assert str(inspect.signature(wrapped)) == str(inspect.signature(fn))
    assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(fn)
    assert inspect.isasyncgenfunction(wrapped) == inspect.isasyncgenfunction(fn)
    assert inspect.isgeneratorfunction(wrapped) == inspect.isgeneratorfunction(fn)
    assert asyncio.iscoroutinefunction(wrapped) == asyncio.iscoroutinefunction(fn)
    assert wrapped.__name__ == fn.__name__
    assert wrapped.__qualname__ == fn.__qualname__
    assert wrapped.__doc__ == fn.__doc__
    assert wrapped.__module__ == fn.__module__
    assert wrapped.__wrapped__ is fn
    assert inspect.unwrap(wrapped) is fn
    assert wrapped.__annotations__ == fn.__annotations__


class Service:
    """Decorated methods of every flavour, each with its own signature."""

    @track_provider("openai", "gpt-4o")
    async def method(self, prompt: str, temperature: float = 0.0) -> str:
        return prompt

    @classmethod
    @track_provider("openai", "gpt-4o")
    async def klass(cls, prompt: str) -> str:
        return prompt

    @staticmethod
    @track_provider("openai", "gpt-4o")
    async def static(prompt: str) -> str:
        return prompt

    @track_sse("/events")
    async def events(self, topic: str) -> AsyncIterator[str]:
        yield topic


def test_decorated_methods_keep_bound_signature_and_kind() -> None:
    svc = Service()
    assert str(inspect.signature(Service.method)) == \
        "(self, prompt: 'str', temperature: 'float' = 0.0) -> 'str'"
    assert str(inspect.signature(svc.method)) == \
        "(prompt: 'str', temperature: 'float' = 0.0) -> 'str'"
    assert str(inspect.signature(Service.klass)) == "(prompt: 'str') -> 'str'"
    assert str(inspect.signature(svc.static)) == "(prompt: 'str') -> 'str'"
    assert str(inspect.signature(svc.events)) == "(topic: 'str') -> 'AsyncIterator[str]'"
    for bound in (svc.method, Service.klass, svc.klass, Service.static, svc.static):
        assert inspect.iscoroutinefunction(bound)
    assert inspect.isasyncgenfunction(svc.events)
    assert svc.method.__name__ == "method"
    assert Service.klass.__name__ == "klass"


# --- sync functions ------------------------------------------------------------------


def test_function_completed_returns_result_and_ends_ok() -> None:
    wrapped, made = observed(plain)
    assert wrapped(7) == 7
    obs = only(made)
    assert obs.ends == [(OK, None, 7)]
    assert obs.args == (7,)
    assert obs.steps == 1
    assert obs.items == []


def test_function_error_reraises_the_same_exception_with_its_traceback() -> None:
    err = Boom("upstream 500")

    def failing() -> None:
        raise err

    wrapped, made = observed(failing)
    with pytest.raises(Boom) as info:
        wrapped()
    assert info.value is err
    assert "failing" in frames(info.value)  # the raising frame is still in the traceback
    assert only(made).ends == [(ERROR, err, None)]


def test_keyboard_interrupt_is_cancelled_and_reraised() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    wrapped, made = observed(interrupted)
    with pytest.raises(KeyboardInterrupt):
        wrapped()
    assert only(made).ends[0][0] == CANCELLED


# --- coroutines ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_coroutine_completed() -> None:
    wrapped, made = observed(coro)
    assert await wrapped(3) == 3
    assert only(made).ends == [(OK, None, 3)]


@pytest.mark.anyio
async def test_coroutine_error_reraises_the_same_exception() -> None:
    err = Boom("rate limited")

    async def failing() -> None:
        await anyio.sleep(0)
        raise err

    wrapped, made = observed(failing)
    with pytest.raises(Boom) as info:
        await wrapped()
    assert info.value is err
    assert "failing" in frames(info.value)
    assert only(made).ends == [(ERROR, err, None)]


@pytest.mark.anyio
async def test_coroutine_cancelled_by_a_cancel_scope_is_cancelled_and_reraised() -> None:
    started = anyio.Event()
    reraised: list[bool] = []

    async def slow() -> None:
        started.set()
        await anyio.sleep_forever()

    wrapped, made = observed(slow)

    async def caller() -> None:
        try:
            await wrapped()
        except anyio.get_cancelled_exc_class():
            reraised.append(True)
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await started.wait()
        tg.cancel_scope.cancel()
    assert reraised == [True]
    obs = only(made)
    assert obs.ends[0][0] == CANCELLED
    assert isinstance(obs.ends[0][1], anyio.get_cancelled_exc_class())


def test_coroutine_task_cancel_on_asyncio_is_cancelled_and_reraised() -> None:
    async def slow() -> None:
        await asyncio.sleep(3600)

    wrapped, made = observed(slow)

    async def main() -> None:
        task = asyncio.ensure_future(wrapped())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert only(made).ends[0][0] == CANCELLED


# --- generators ----------------------------------------------------------------------


class Source:
    """A generator source that records whether its cleanup ran."""

    def __init__(self, count: int = 3, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.error = Boom(f"failed at {fail_at}")
        self.cleaned = 0

    def sync(self) -> Iterator[int]:
        try:
            for i in range(self.count):
                if i == self.fail_at:
                    raise self.error
                yield i
            return None
        finally:
            self.cleaned += 1

    async def aio(self) -> AsyncIterator[int]:
        try:
            for i in range(self.count):
                await anyio.sleep(0)
                if i == self.fail_at:
                    raise self.error
                yield i
        finally:
            self.cleaned += 1


def test_generator_exhausted_ends_ok_once_with_every_item() -> None:
    src = Source()
    wrapped, made = observed(src.sync)
    stream = wrapped()
    assert isinstance(stream, SyncStream)
    assert list(stream) == [0, 1, 2]
    obs = only(made)
    assert obs.ends == [(OK, None, None)]
    assert obs.items == [0, 1, 2]
    assert src.cleaned == 1
    with pytest.raises(StopIteration):
        next(stream)
    assert len(obs.ends) == 1


def test_generator_return_value_reaches_the_observer_and_the_caller() -> None:
    def returns() -> Any:
        yield 1
        return "done"

    wrapped, made = observed(returns)
    stream = wrapped()
    assert next(stream) == 1
    with pytest.raises(StopIteration) as info:
        next(stream)
    assert info.value.value == "done"
    assert only(made).ends == [(OK, None, "done")]


def test_generator_error_mid_stream_reraises_the_same_exception() -> None:
    src = Source(fail_at=1)
    wrapped, made = observed(src.sync)
    stream = wrapped()
    assert next(stream) == 0
    with pytest.raises(Boom) as info:
        next(stream)
    assert info.value is src.error
    assert "sync" in frames(info.value)
    assert only(made).ends == [(ERROR, src.error, None)]


def test_generator_break_then_drop_ends_closed_once() -> None:
    src = Source()
    wrapped, made = observed(src.sync)
    for item in wrapped():
        assert item == 0
        break
    gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]
    assert src.cleaned == 1


def test_generator_close_runs_cleanup_and_is_idempotent() -> None:
    src = Source()
    wrapped, made = observed(src.sync)
    stream = wrapped()
    assert next(stream) == 0
    stream.close()
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    del stream
    gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]
    assert src.cleaned == 1


def test_generator_throw_and_send_pass_through() -> None:
    def echo() -> Any:
        received: Any = yield "ready"
        while True:
            received = yield received * 2

    wrapped, made = observed(echo)
    stream = wrapped()
    assert next(stream) == "ready"
    assert stream.send(21) == 42
    err = Boom("thrown")
    with pytest.raises(Boom) as info:
        stream.throw(err)
    assert info.value is err
    assert only(made).ends == [(ERROR, err, None)]
    assert made[0].items == ["ready", 42]


def test_unstarted_generator_collected_by_gc_ends_closed_once() -> None:
    src = Source()
    wrapped, made = observed(src.sync)
    stream = wrapped()
    del stream
    gc.collect()
    obs = only(made)
    assert obs.ends == [(CLOSED, None, None)]
    assert src.cleaned == 0  # its body never ran
    assert obs.items == []


def test_half_consumed_generator_collected_by_gc_ends_closed_once() -> None:
    src = Source()
    wrapped, made = observed(src.sync)
    stream = wrapped()
    assert next(stream) == 0
    del stream
    gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]
    assert src.cleaned == 1


def test_generator_in_a_reference_cycle_is_finalised_by_the_cycle_collector() -> None:
    src = Source()
    wrapped, made = observed(src.sync)
    holder: dict[str, Any] = {}
    holder["self"] = holder
    holder["stream"] = wrapped()
    next(holder["stream"])
    del holder
    assert made[0].ends == []
    gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]


def test_function_returning_a_generator_that_raises_at_creation() -> None:
    """A plain function marked as a generator factory can fail before any item."""
    err = Boom("bad arguments")

    def gen_factory(flag: bool) -> Iterator[int]:
        if flag:
            raise err
        yield 1

    wrapped, made = observed(gen_factory)
    stream = wrapped(True)
    with pytest.raises(Boom) as info:
        next(stream)
    assert info.value is err
    assert only(made).ends == [(ERROR, err, None)]


# --- async generators ------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_generator_exhausted_ends_ok_once() -> None:
    src = Source()
    wrapped, made = observed(src.aio)
    stream = wrapped()
    assert isinstance(stream, AsyncStream)
    assert [i async for i in stream] == [0, 1, 2]
    obs = only(made)
    assert obs.ends == [(OK, None, None)]
    assert obs.items == [0, 1, 2]
    assert src.cleaned == 1
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert len(obs.ends) == 1


@pytest.mark.anyio
async def test_async_generator_error_reraises_the_same_exception() -> None:
    src = Source(fail_at=2)
    wrapped, made = observed(src.aio)
    seen = []
    with pytest.raises(Boom) as info:
        async for item in wrapped():
            seen.append(item)
    assert seen == [0, 1]
    assert info.value is src.error
    assert "aio" in frames(info.value)
    assert only(made).ends == [(ERROR, src.error, None)]


@pytest.mark.anyio
async def test_async_generator_aclose_runs_cleanup_and_is_idempotent() -> None:
    src = Source()
    wrapped, made = observed(src.aio)
    stream = wrapped()
    assert await stream.__anext__() == 0
    await stream.aclose()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert only(made).ends == [(CLOSED, None, None)]
    assert src.cleaned == 1


@pytest.mark.anyio
async def test_async_generator_break_then_drop_ends_closed_once(anyio_backend: str) -> None:
    src = Source()
    wrapped, made = observed(src.aio)
    with dropped_async_generator(anyio_backend):
        async for item in wrapped():
            assert item == 0
            break
        gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]
    for _ in range(5):  # the event loop finalises the dropped source
        await anyio.sleep(0)
    assert src.cleaned == 1


@pytest.mark.anyio
async def test_async_generator_cancelled_mid_stream_is_cancelled_and_reraised() -> None:
    started = anyio.Event()
    reraised: list[bool] = []

    async def waits() -> AsyncIterator[int]:
        yield 1
        started.set()
        await anyio.sleep_forever()
        yield 2

    wrapped, made = observed(waits)

    async def consumer() -> None:
        try:
            async for _ in wrapped():
                pass
        except anyio.get_cancelled_exc_class():
            reraised.append(True)
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await started.wait()
        tg.cancel_scope.cancel()
    assert reraised == [True]
    obs = only(made)
    assert obs.ends[0][0] == CANCELLED
    assert obs.items == [1]


@pytest.mark.anyio
async def test_async_generator_asend_and_athrow_pass_through() -> None:
    async def echo() -> AsyncIterator[Any]:
        received: Any = yield "ready"
        while True:
            received = yield received * 2

    wrapped, made = observed(echo)
    stream = wrapped()
    assert await stream.__anext__() == "ready"
    assert await stream.asend(21) == 42
    err = Boom("thrown")
    with pytest.raises(Boom) as info:
        await stream.athrow(err)
    assert info.value is err
    assert only(made).ends == [(ERROR, err, None)]


@pytest.mark.anyio
async def test_unstarted_async_generator_collected_by_gc_ends_closed_once() -> None:
    src = Source()
    wrapped, made = observed(src.aio)
    stream = wrapped()
    del stream
    gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]
    assert src.cleaned == 0


@pytest.mark.anyio
async def test_half_consumed_async_generator_collected_by_gc_ends_closed_once(
        anyio_backend: str) -> None:
    src = Source()
    wrapped, made = observed(src.aio)
    stream = wrapped()
    assert await stream.__anext__() == 0
    with dropped_async_generator(anyio_backend):
        del stream
        gc.collect()
    assert only(made).ends == [(CLOSED, None, None)]
    for _ in range(5):
        await anyio.sleep(0)
    assert src.cleaned == 1


# --- methods, classmethods, staticmethods ------------------------------------------------

RECORDED: list[Recorder] = []


def recording(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Recorder:
    obs = Recorder(instance, args, kwargs)
    RECORDED.append(obs)
    return obs


F = TypeVar("F", bound=Callable[..., Any])


def record(fn: F) -> F:
    return instrument_callable(fn, recording)


class Wrapped:
    @record
    def method(self, x: int) -> int:
        return x

    @classmethod
    @record
    def klass(cls, x: int) -> tuple[type, int]:
        return cls, x

    @staticmethod
    @record
    def static(x: int) -> int:
        return x

    # the decorator written above @classmethod / @staticmethod wraps the descriptor
    @record
    @classmethod
    def klass_outer(cls, x: int) -> tuple[type, int]:
        return cls, x

    @record
    @staticmethod
    def static_outer(x: int) -> int:
        return x

    @record
    async def amethod(self, x: int) -> int:
        return x

    @record
    def gmethod(self, n: int) -> Iterator[int]:
        yield from range(n)

    @record
    async def agmethod(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


@pytest.fixture
def recorded() -> Iterator[list[Recorder]]:
    RECORDED.clear()
    yield RECORDED
    RECORDED.clear()


def test_method_sees_its_instance_and_arguments(recorded: list[Recorder]) -> None:
    obj = Wrapped()
    assert obj.method(1) == 1
    assert Wrapped.method(obj, 2) == 2
    assert [(o.instance, o.args) for o in recorded] == [(obj, (1,)), (obj, (2,))]
    assert all(o.ends == [(OK, None, o.args[0])] for o in recorded)


@pytest.mark.parametrize("name", ["klass", "klass_outer"])
def test_classmethod_sees_its_class(recorded: list[Recorder], name: str) -> None:
    assert getattr(Wrapped, name)(3) == (Wrapped, 3)
    assert getattr(Wrapped(), name)(4) == (Wrapped, 4)
    assert [o.instance for o in recorded] == [Wrapped, Wrapped]
    assert [o.ends[0][0] for o in recorded] == [OK, OK]


@pytest.mark.parametrize("name", ["static", "static_outer"])
def test_staticmethod_gets_no_instance(recorded: list[Recorder], name: str) -> None:
    assert getattr(Wrapped, name)(5) == 5
    assert getattr(Wrapped(), name)(6) == 6
    assert [(o.instance, o.args) for o in recorded] == [(None, (5,)), (None, (6,))]


@pytest.mark.anyio
async def test_method_of_every_kind_ends_once(recorded: list[Recorder]) -> None:
    obj = Wrapped()
    assert await obj.amethod(1) == 1
    assert list(obj.gmethod(2)) == [0, 1]
    assert [i async for i in obj.agmethod(2)] == [0, 1]
    assert [len(o.ends) for o in recorded] == [1, 1, 1]
    assert [o.ends[0][0] for o in recorded] == [OK, OK, OK]
    assert [o.instance for o in recorded] == [obj, obj, obj]


# --- the engine protects the host from its own failures ----------------------------------


def test_a_failing_observer_factory_still_runs_the_call(
        registry: CollectorRegistry, expect_internal_errors: None) -> None:
    def broken(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Observer:
        raise RuntimeError("observer bug")

    wrapped = instrument_callable(plain, broken)
    assert wrapped(5) == 5
    streamed = instrument_callable(gen, broken)
    assert list(streamed(6)) == [6]
    assert value(registry, "instrument_internal_errors_total", where="observer_start") == 2


def test_failing_hooks_never_reach_the_caller(
        registry: CollectorRegistry, expect_internal_errors: None) -> None:
    class Broken(Observer):
        def item(self, value: Any) -> Any:
            raise RuntimeError("item bug")

        def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
            raise RuntimeError("end bug")

    wrapped = instrument_callable(gen, lambda i, a, k: Broken())
    assert list(wrapped(3)) == [3]  # the item passes unchanged
    assert value(registry, "instrument_internal_errors_total", where="Broken") == 2


# --- trace context across steps and tasks --------------------------------------------


class Traced(TracedObserver):
    def __init__(self) -> None:
        super().__init__(current())


def traced(fn: Callable[..., Any]) -> Any:
    return instrument_callable(fn, lambda i, a, k: Traced())


@pytest.mark.anyio
async def test_stream_steps_run_in_the_creators_trace_from_any_task() -> None:
    """Each step is entered and left in the consumer's own context: no token crosses a task."""

    @traced
    async def ids() -> AsyncIterator[tuple[str | None, str | None]]:
        for _ in range(4):
            yield get_trace_id(), get_span_id()
            await anyio.sleep(0)

    with use_trace_id("creator-trace", "creator-span"):
        stream = ids()
    seen: list[tuple[str | None, str | None]] = []

    async def one_step(n: int) -> None:
        with use_trace_id(f"consumer-{n}", f"span-{n}"):
            seen.append(await stream.__anext__())
            # nothing of the stream's context leaks into the consumer
            assert (get_trace_id(), get_span_id()) == (f"consumer-{n}", f"span-{n}")

    for n in range(4):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one_step, n)
    assert {trace for trace, _ in seen} == {"creator-trace"}
    span_ids = {span for _, span in seen}
    assert len(span_ids) == 1 and span_ids != {"creator-span"}  # its own child span
    await stream.aclose()
    assert get_trace_id() is None


def test_sync_stream_stepped_from_other_contexts_leaks_nothing() -> None:
    import contextvars

    @traced
    def ids() -> Iterator[str | None]:
        while True:
            yield get_trace_id()

    with use_trace_id("creator"):
        stream = ids()
    for n in range(3):
        ctx = contextvars.copy_context()

        def step(n: int = n) -> str | None:
            with use_trace_id(f"consumer-{n}"):
                item: str | None = next(stream)
                assert get_trace_id() == f"consumer-{n}"
                return item

        assert ctx.run(step) == "creator"
    stream.close()
    assert get_trace_id() is None


def test_dropped_sync_stream_cleans_up_inside_the_creators_trace() -> None:
    """A generator's ``finally`` (closing a connection, logging) still runs in its trace."""
    cleanup: list[str | None] = []

    @traced
    def stream() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleanup.append(get_trace_id())

    with use_trace_id("creator"):
        s = stream()
    assert next(s) == 1
    with use_trace_id("consumer"):
        del s
        gc.collect()
        assert get_trace_id() == "consumer"
    assert cleanup == ["creator"]


# --- frameworks read the decorated signature -------------------------------------------


class ChatBody(BaseModel):
    prompt: str
    max_tokens: int = 16


@pytest.mark.anyio
async def test_fastapi_parses_parameters_of_decorated_route_handlers(
        registry: CollectorRegistry) -> None:
    app = FastAPI()

    @app.post("/chat/{user}")
    @track_provider("openai")
    async def chat(user: str, body: ChatBody, model: str = "gpt-4o-mini",
                   temperature: float = 0.0) -> dict[str, Any]:
        record_usage(input_tokens=10, output_tokens=body.max_tokens)
        return {"user": user, "prompt": body.prompt, "model": model, "t": temperature}

    @app.get("/cache/{key}")
    @track_cache("kv")
    def lookup(key: str, x_tenant: str | None = Header(default=None)) -> dict[str, Any]:
        return {"key": key, "tenant": x_tenant}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.post("/chat/ada?model=gpt-4o&temperature=0.5",
                               json={"prompt": "hi", "max_tokens": 5})
        assert ok.status_code == 200
        assert ok.json() == {"user": "ada", "prompt": "hi", "model": "gpt-4o", "t": 0.5}
        bad = await client.post("/chat/ada?temperature=hot", json={"prompt": "hi"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "temperature"]
        missing = await client.post("/chat/ada", json={})
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "prompt"]
        got = await client.get("/cache/k1", headers={"X-Tenant": "acme"})
        assert got.json() == {"key": "k1", "tenant": "acme"}

    params = app.openapi()["paths"]["/chat/{user}"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["user", "model", "temperature"]
    # FastAPI passes the query parameter as a keyword: the decorator reads the model from it
    assert value(registry, "provider_requests_total", provider="openai", model="gpt-4o",
                 status="ok") == 1
    assert value(registry, "provider_tokens_total", provider="openai", model="gpt-4o",
                 type="output") == 5
    # a request FastAPI rejected never reached the handler
    assert value(registry, "provider_requests_total", provider="openai", model="gpt-4o-mini",
                 status="ok") == 0
    assert value(registry, "cache_hits_total", cache="kv") == 1
