"""What the LLM SDK integrations share: a client method observed as a provider call.

Framework-free: the adapters (``instrument.adapters.openai``, ``.anthropic``) say
which methods of which client objects to observe and which classes are the
SDK's streams. A method's call is a ``ProviderCall`` driven by the same engine
as ``@track_provider``; a stream it returns is handed back as a proxy of the
SDK's own object (its attributes, helpers and type stay the SDK's) whose items
pass through the engine's ``SyncStream``/``AsyncStream``, so it is finalised
exactly once on every exit path. The trace headers go out with the request as
the SDK's ``extra_headers``, so they reach the provider whatever HTTP client
the SDK uses. Its HTTP attempts and rate-limit headers are read by hooks on the
SDK client's own ``httpx``/``httpx2`` client (``_attempts``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wrapt

from instrument import _metrics
from instrument._attempts import hook_http_client
from instrument._context import trace_context
from instrument._engine import (
    CLOSED,
    OK,
    AsyncStream,
    Observer,
    SyncStream,
    instrument_callable,
    outcome_for,
)
from instrument._observe import resolve_metrics
from instrument._propagation import outbound_headers
from instrument._provider import UNKNOWN_MODEL, ProviderCall, Usage, read_usage

if TYPE_CHECKING:  # wrapt 2 types its proxy as a generic; wrapt 1 cannot subscript it
    _Proxy = wrapt.ObjectProxy[Any]
else:
    _Proxy = wrapt.ObjectProxy

_MARK = "_instrument_observed"  # on a resource: the names of its methods already wrapped


class SyncSDKStream(_Proxy):
    """An SDK stream whose items pass the engine; everything else is the SDK object's own."""

    def __init__(self, stream: Any, call: Observer) -> None:
        super().__init__(stream)
        self._self_engine = SyncStream(stream, call)

    def __iter__(self) -> SyncSDKStream:
        return self

    def __next__(self) -> Any:
        return self._self_engine.__next__()

    def close(self) -> None:
        self._self_engine.close()  # closes the SDK stream, then ends the call (once)

    def __enter__(self) -> SyncSDKStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class AsyncSDKStream(_Proxy):
    """The async twin of ``SyncSDKStream`` (the SDKs' async streams close with ``close()``)."""

    def __init__(self, stream: Any, call: Observer) -> None:
        super().__init__(stream)
        self._self_engine = AsyncStream(stream, call)

    def __aiter__(self) -> AsyncSDKStream:
        return self

    def __anext__(self) -> Any:
        return self._self_engine.__anext__()

    async def close(self) -> None:
        try:
            await self._self_engine.aclose()  # ends the call before awaiting the network
        finally:
            await self.__wrapped__.close()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> AsyncSDKStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def _raw_of(helper: Any) -> Any:
    """The raw stream under an SDK helper stream (``ChatCompletionStream``, ``MessageStream``)."""
    return getattr(helper, "_raw_stream", None)


class _Manager(_Proxy):
    """A ``.stream()`` helper's context manager, whose helper stream reads an observed raw
    stream that is closed on the way out.

    With ``call`` (Anthropic, whose helper sends its request without ``create``), the
    request runs inside that call and the helper's raw stream is swapped for an observed
    one; without (OpenAI, whose helper calls the observed ``create``), it already is one.
    """

    def __init__(self, manager: Any, call: Observer | None) -> None:
        super().__init__(manager)
        self._self_call = call
        self._self_helper: Any = None

    def _opened(self, helper: Any, proxy: type[Any]) -> Any:
        self._self_helper = helper
        call = self._self_call
        if call is not None:
            try:
                helper._raw_stream = proxy(_raw_of(helper), call)
            except Exception as err:  # an SDK version without the attribute: count, unread
                _metrics.report_internal_error("sdk_stream", err)
                call.finish(OK, None)
        return helper

    def __del__(self) -> None:  # a manager never entered: its call never started either
        call = self._self_call
        if call is not None and self._self_helper is None and not call.ended:
            call.finish(CLOSED, None)


class SyncManager(_Manager):
    def __enter__(self) -> Any:
        call = self._self_call
        if call is None:
            return self._opened(self.__wrapped__.__enter__(), SyncSDKStream)
        state = call.enter()
        try:
            helper = self.__wrapped__.__enter__()
        except BaseException as exc:
            call.finish(outcome_for(exc), exc)
            raise
        finally:
            call.leave(state)
        return self._opened(helper, SyncSDKStream)

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            raw = _raw_of(self._self_helper)
            if isinstance(raw, SyncSDKStream):
                raw.close()


class AsyncManager(_Manager):
    async def __aenter__(self) -> Any:
        call = self._self_call
        if call is None:
            return self._opened(await self.__wrapped__.__aenter__(), AsyncSDKStream)
        state = call.enter()
        try:
            helper = await self.__wrapped__.__aenter__()
        except BaseException as exc:
            call.finish(outcome_for(exc), exc)
            raise
        finally:
            call.leave(state)
        return self._opened(helper, AsyncSDKStream)

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            raw = _raw_of(self._self_helper)
            if isinstance(raw, AsyncSDKStream):
                await raw.close()


class NestedCall(Observer):
    """An SDK call made inside a provider call already observed (a ``@track_provider``
    function): that call counts it, and gets its usage; this one records nothing itself."""

    __slots__ = ("outer", "usage")

    def __init__(self, outer: Usage) -> None:
        super().__init__()
        self.outer = outer
        self.usage = Usage()

    def item(self, value: Any) -> Any:
        found = read_usage(value)
        if found is not None:
            self.usage.merge(found)
        return value

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        found = read_usage(result) if result is not None else None
        u = self.usage
        if found is not None:
            u.merge(found)
        if (u.input or u.output) and not self.outer.closed:
            # added, like record_usage: an agent's several SDK calls add up in its one call
            self.outer.record(u.input, u.output, u.cached_input, None, 0.0, u.cache_write,
                              u.reasoning, u.cache_write_1h)


class Target:
    """Where an adapter's calls are recorded: provider name, registry, the SDK's stream types."""

    def __init__(self, provider: str, registry: Any, sync_stream: type[Any],
                 async_stream: type[Any]) -> None:
        if not isinstance(provider, str) or not provider:
            raise ValueError(f"provider must be a non-empty string, got {provider!r}")
        self.provider = provider
        self.registry = registry
        self.streams = (sync_stream, async_stream)

    def start(self, operation: str, kwargs: dict[str, Any]) -> Observer:
        """A provider call for these SDK keyword arguments; its trace headers join them."""
        ctx = trace_context.get()
        call: Observer
        if ctx is not None and ctx.usage is not None and not ctx.usage.closed:
            call, trace = NestedCall(ctx.usage), ctx
        else:
            model = kwargs.get("model")
            call = ProviderCall(resolve_metrics(self.registry), self.provider,
                                model if isinstance(model, str) and model else UNKNOWN_MODEL,
                                operation, False, None)
            trace = call.trace
        ours = dict(outbound_headers(trace))
        theirs = kwargs.get("extra_headers")
        if isinstance(theirs, dict):  # the caller's own trace headers win
            taken = {str(k).lower() for k in theirs}
            ours = {k: v for k, v in ours.items() if k.lower() not in taken}
            kwargs["extra_headers"] = {**ours, **theirs}
        elif theirs is None:
            kwargs["extra_headers"] = ours
        return call

    def stream_of(self, result: Any, call: Observer) -> Any:
        """A ``create(stream=True)`` result, proxied; None for a result that ends the call."""
        if isinstance(result, self.streams[0]):
            return SyncSDKStream(result, call)
        if isinstance(result, self.streams[1]):
            return AsyncSDKStream(result, call)
        return None


def observe_http(client: Any) -> None:
    """Count the attempts and read the rate-limit headers of ``client``'s observed calls,
    through hooks on the HTTP client the SDK sends them with (``client._client``)."""
    http = getattr(client, "_client", None)
    if http is None or not hasattr(http, "event_hooks"):
        return
    try:
        hook_http_client(http)
    except Exception as err:  # an HTTP client of another shape: no retries, no headroom
        _metrics.report_internal_error("sdk_http_hooks", err)


#: (SDK class, method name) -> the class's own function, for the methods observed for the
#: whole process (``observe_class``); ``restore_classes`` puts them back
_patched: dict[tuple[type, str], Any] = {}


def _class_observed(resource: Any, name: str) -> bool:
    return any((klass, name) in _patched for klass in type(resource).__mro__)


def _claim(resource: Any, name: str) -> Any:
    """The method to wrap, or None when this resource's method is observed already (on this
    object, or by its class for the whole process: never twice)."""
    done: set[str] = resource.__dict__.setdefault(_MARK, set())
    if name in done or _class_observed(resource, name):
        return None
    done.add(name)
    return getattr(resource, name)


def _hook_resource(resource: Any) -> None:
    """A class-observed call: its SDK client's HTTP hooks, added on its first call."""
    observe_http(getattr(resource, "_client", None))


def _method_wrapper(method: Any, operation: str, target: Target, per_class: bool) -> Any:
    def start(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Observer:
        if per_class:
            _hook_resource(instance)
        return target.start(operation, kwargs)

    return instrument_callable(method, start, result_stream=target.stream_of)


def observe_method(resource: Any, name: str, operation: str, target: Target) -> None:
    """Observe ``resource.<name>`` (``create``) as a provider call, on this object only."""
    method = _claim(resource, name)
    if method is not None:
        setattr(resource, name, _method_wrapper(method, operation, target, False))


def _stream_wrapper(method: Any, operation: str, target: Target | None, asynchronous: bool,
                    per_class: bool) -> Any:
    manager_type: Callable[[Any, Observer | None], Any] = (
        AsyncManager if asynchronous else SyncManager)

    @functools.wraps(method)
    def stream(*args: Any, **kwargs: Any) -> Any:
        call = None
        if target is not None:
            try:
                if per_class and args:
                    _hook_resource(args[0])  # the resource, as the method is the class's
                call = target.start(operation, kwargs)
            except Exception as err:  # our bookkeeping failed: the call runs unobserved
                _metrics.report_internal_error("observer_start", err)
        if call is None:
            manager = method(*args, **kwargs)
        else:
            state = call.enter()
            try:
                manager = method(*args, **kwargs)
            except BaseException as exc:
                call.finish(outcome_for(exc), exc)
                raise
            finally:
                call.leave(state)
        return manager_type(manager, call)

    return stream


def observe_stream_helper(resource: Any, operation: str, target: Target | None,
                          asynchronous: bool) -> None:
    """Observe ``resource.stream(...)``, whose manager opens a helper stream.

    Without ``target`` the helper's request goes through an observed ``create``, and
    only its closing is taken care of here.
    """
    method = _claim(resource, "stream")
    if method is not None:
        resource.stream = _stream_wrapper(method, operation, target, asynchronous, False)


def observe_class(cls: type, name: str, operation: str, target: Target | None,
                  asynchronous: bool = False) -> None:
    """Observe ``cls.<name>`` (``create``, or ``stream`` for a helper) for every instance, in
    the whole process; once, however often asked. ``target`` None: as for
    ``observe_stream_helper``."""
    if (cls, name) in _patched:
        return
    original = cls.__dict__[name]
    if name == "stream":
        wrapper = _stream_wrapper(original, operation, target, asynchronous, True)
    else:
        assert target is not None
        wrapper = _method_wrapper(original, operation, target, True)
    _patched[(cls, name)] = original
    setattr(cls, name, wrapper)


def restore_classes(classes: tuple[type, ...]) -> None:
    """Undo ``observe_class`` for these classes (clients instrumented one by one stay so)."""
    for (cls, name), original in list(_patched.items()):
        if cls in classes:
            setattr(cls, name, original)
            del _patched[(cls, name)]
