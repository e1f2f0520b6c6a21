"""One wrapping engine for every decorator: it drives an ``Observer`` through a call's life.

The callable's kind is decided once, at decoration time: plain function,
coroutine function, generator function or async generator function. Each kind
has one wrapper; a stream is returned as an object that owns its state and is
finalised exactly once: on exhaustion, error, ``close()``/``aclose()``, task
cancellation, or garbage collection (even when it was never iterated).

The observer's trace context is made current around each step of the wrapped
code and removed again before control returns to the consumer, so nothing is
attached across a ``yield``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator
from typing import Any, TypeVar, cast

import wrapt

from instrument import _metrics

F = TypeVar("F", bound=Callable[..., Any])

# Outcomes an observer is ended with.
OK = "ok"
ERROR = "error"
CANCELLED = "cancelled"  # task cancellation
CLOSED = "closed"  # the consumer stopped early: break, close()/aclose(), or garbage collection

_CANCEL_NAMES = frozenset({"CancelledError", "Cancelled"})

#: the status a call is recorded with, per outcome: stopping early is a cancellation
STATUS = {OK: "ok", ERROR: "error", CANCELLED: "cancelled", CLOSED: "cancelled"}


def outcome_for(exc: BaseException) -> str:
    """Map an exception that ended a call to its outcome."""
    if isinstance(exc, GeneratorExit):
        return CLOSED
    if type(exc).__name__ in _CANCEL_NAMES or isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return CANCELLED
    return ERROR


def status_of(exc: BaseException | None) -> str:
    """ok, error or cancelled for a call that ended with ``exc`` (None: it returned)."""
    return OK if exc is None else STATUS[outcome_for(exc)]


class Observer:
    """One call's lifecycle. Subclasses override the hooks; the engine guarantees the order:
    ``__init__`` (call start) -> ``enter``/``leave`` around each step -> ``item`` per
    streamed item -> ``end`` exactly once.
    """

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False

    def enter(self) -> Any:
        """Make this call's context current; return what ``leave`` needs to undo it."""
        return None

    def leave(self, state: Any) -> None:
        """Undo ``enter`` (same context, same step)."""

    def item(self, value: Any) -> Any:
        """A streamed item on its way to the consumer; returns what the consumer gets."""
        return value

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        """The call is over (``result`` is the return value of a plain call)."""

    def finish(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        """Run ``end`` once, whatever happens inside it."""
        if self.ended:
            return
        self.ended = True
        try:
            self.end(outcome, exc, result)
        except Exception as err:  # bookkeeping must never reach the host
            _metrics.report_internal_error(type(self).__name__, err)


ObserverFactory = Callable[[Any, tuple[Any, ...], dict[str, Any]], Observer]


def _safe_item(obs: Observer, value: Any) -> Any:
    try:
        return obs.item(value)
    except Exception as err:
        _metrics.report_internal_error(type(obs).__name__, err)
        return value


class SyncStream:
    """A wrapped generator: iterates the source inside the call's context, one step at a time."""

    __slots__ = ("__weakref__", "_obs", "_source")

    def __init__(self, source: Generator[Any, Any, Any], obs: Observer) -> None:
        self._source = source
        self._obs = obs

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        obs = self._obs
        state = obs.enter()
        try:
            item = self._source.send(value) if value is not None else next(self._source)
        except StopIteration as stop:
            obs.finish(OK, None, stop.value)
            raise
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        return _safe_item(obs, item)

    def throw(self, *args: Any) -> Any:
        obs = self._obs
        state = obs.enter()
        try:
            item = self._source.throw(*args)
        except StopIteration as stop:
            obs.finish(OK, None, stop.value)
            raise
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        return _safe_item(obs, item)

    def close(self) -> None:
        obs = self._obs
        state = obs.enter()
        try:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        obs.finish(CLOSED, None)

    def __del__(self) -> None:
        if not self._obs.ended:
            # close the source here rather than leave it to its own finaliser, so
            # its cleanup (finally blocks, log lines) runs inside the call's context
            self.close()


class AsyncStream:
    """A wrapped async generator: same contract as ``SyncStream``, for ``async for``."""

    __slots__ = ("__weakref__", "_obs", "_source")

    def __init__(self, source: Any, obs: Observer) -> None:
        self._source = source
        self._obs = obs

    def __aiter__(self) -> AsyncStream:
        return self

    def __anext__(self) -> Any:
        return self._step(self._source.__anext__)

    def asend(self, value: Any) -> Any:
        return self._step(self._source.asend, value)

    def athrow(self, *args: Any) -> Any:
        return self._step(self._source.athrow, *args)

    async def _step(self, method: Callable[..., Any], *args: Any) -> Any:
        obs = self._obs
        state = obs.enter()
        try:
            item = await method(*args)
        except StopAsyncIteration:
            obs.finish(OK, None)
            raise
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        return _safe_item(obs, item)

    async def aclose(self) -> None:
        obs = self._obs
        state = obs.enter()
        try:
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        obs.finish(CLOSED, None)

    def __del__(self) -> None:
        if not self._obs.ended:
            self._obs.finish(CLOSED, None)


def kind_of(fn: Any) -> str:
    """``function``, ``coroutine``, ``generator`` or ``asyncgen``: decided once, at decoration."""
    target = inspect.unwrap(getattr(fn, "__func__", fn))
    found = _kind(target)
    if (found == "function" and callable(target) and not inspect.isroutine(target)
            and not inspect.isclass(target)):
        # an object with ``async def __call__``: judged by that method, or the sync
        # wrapper would time only the creation of its coroutine
        found = _kind(type(target).__call__)
    return found


def _kind(target: Any) -> str:
    if inspect.isasyncgenfunction(target):
        return "asyncgen"
    if inspect.iscoroutinefunction(target):
        return "coroutine"
    if inspect.isgeneratorfunction(target):
        return "generator"
    return "function"


StreamType = Callable[[Any, Any], Any]
#: given a plain call's result and its observer: the stream object that now owns the
#: observer (and finalises it), or None when the result ends the call
ResultStream = Callable[[Any, Observer], Any]


def _start(factory: ObserverFactory, instance: Any, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> Observer | None:
    try:
        return factory(instance, args, kwargs)
    except Exception as err:  # our bookkeeping failed: the call runs unobserved
        _metrics.report_internal_error("observer_start", err)
        return None


def _hand_over(obs: Observer, result: Any, result_stream: ResultStream) -> Any:
    try:
        owned = result_stream(result, obs)
    except Exception as err:
        _metrics.report_internal_error("result_stream", err)
        owned = None
    if owned is None:
        obs.finish(OK, None, result)
        return result
    return owned


def _returning_streams(fn: F, kind: str, factory: ObserverFactory,
                       result_stream: ResultStream) -> F:
    """Wrappers for a plain or coroutine function whose result may be a stream object
    (an SDK's ``create(stream=True)``): such a result is handed to ``result_stream``, and
    the call ends with that stream instead of at the return."""
    if kind == "coroutine":
        async def call_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> Any:
            obs = _start(factory, instance, args, kwargs)
            if obs is None:
                return await wrapped(*args, **kwargs)
            state = obs.enter()
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                obs.finish(outcome_for(exc), exc)
                raise
            finally:
                obs.leave(state)
            return _hand_over(obs, result, result_stream)

        return cast(F, wrapt.FunctionWrapper(fn, call_async))

    def call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        obs = _start(factory, instance, args, kwargs)
        if obs is None:
            return wrapped(*args, **kwargs)
        state = obs.enter()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        return _hand_over(obs, result, result_stream)

    return cast(F, wrapt.FunctionWrapper(fn, call))


def instrument_callable(fn: F, factory: ObserverFactory,
                        stream_types: tuple[StreamType, StreamType] = (SyncStream, AsyncStream),
                        result_stream: ResultStream | None = None) -> F:
    """Wrap ``fn`` (any of the four kinds, also methods) so ``factory`` observes every call.

    The wrapper keeps ``fn``'s signature, name and introspection (wrapt), so
    frameworks still read its parameters and ``inspect`` still sees its kind.
    With ``result_stream``, a plain or coroutine function may return a stream
    object that takes the call over (see ``ResultStream``).
    """
    kind = kind_of(fn)
    sync_stream, async_stream = stream_types
    if result_stream is not None and kind in ("function", "coroutine"):
        return _returning_streams(fn, kind, factory, result_stream)

    if kind == "coroutine":
        async def call_async(wrapped: Any, instance: Any, args: tuple[Any, ...],
                             kwargs: dict[str, Any]) -> Any:
            try:
                obs = factory(instance, args, kwargs)
            except Exception as err:  # our bookkeeping failed: the call runs unobserved
                _metrics.report_internal_error("observer_start", err)
                obs = None
            if obs is None:
                return await wrapped(*args, **kwargs)
            state = obs.enter()
            try:
                result = await wrapped(*args, **kwargs)
            except BaseException as exc:
                obs.finish(outcome_for(exc), exc)
                raise
            finally:
                obs.leave(state)
            obs.finish(OK, None, result)
            return result

        return cast(F, wrapt.FunctionWrapper(fn, call_async))

    if kind == "function":
        def call(wrapped: Any, instance: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
            try:
                obs = factory(instance, args, kwargs)
            except Exception as err:  # our bookkeeping failed: the call runs unobserved
                _metrics.report_internal_error("observer_start", err)
                obs = None
            if obs is None:
                return wrapped(*args, **kwargs)
            state = obs.enter()
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as exc:
                obs.finish(outcome_for(exc), exc)
                raise
            finally:
                obs.leave(state)
            obs.finish(OK, None, result)
            return result

        return cast(F, wrapt.FunctionWrapper(fn, call))

    stream = async_stream if kind == "asyncgen" else sync_stream

    def call_stream(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        try:
            obs = factory(instance, args, kwargs)
        except Exception as err:
            _metrics.report_internal_error("observer_start", err)
            obs = None
        if obs is None:
            return wrapped(*args, **kwargs)
        state = obs.enter()
        try:
            # creating a generator runs none of its body, but a plain function
            # that merely returns one may raise here
            source = wrapped(*args, **kwargs)
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        finally:
            obs.leave(state)
        return stream(source, obs)

    return cast(F, wrapt.FunctionWrapper(fn, call_stream))

