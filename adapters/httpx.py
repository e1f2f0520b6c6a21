"""httpx adapter: trace headers out and client metrics for ``httpx.Client`` and ``AsyncClient``.

It wraps the client's transports (the default one and every mount), so it composes
with the user's own transport and with mocks such as ``httpx.MockTransport`` or respx.
The same implementation serves ``httpx2`` clients (the package the current OpenAI
and Anthropic SDKs are built on) when it is installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast

try:
    import httpx
except ImportError as exc:
    raise ImportError("instrument.adapters.httpx needs httpx: "
                      "pip install 'llm-instrument[httpx]'") from exc

try:  # optional: the same API under another name, which the current LLM SDKs require
    import httpx2
except ImportError:
    httpx2 = None  # type: ignore[assignment]

from prometheus_client import CollectorRegistry

from instrument import _metrics
from instrument._context import trace_context
from instrument._http import ClientRequest, host_label
from instrument._rawprovider import RawProviderCall

__all__ = ["AsyncInstrumentedTransport", "InstrumentedTransport", "instrument_client"]

C = TypeVar("C")
T = TypeVar("T")
_NOT_READ: tuple[type[Exception], ...] = (httpx.RequestNotRead,) + (
    (httpx2.RequestNotRead,) if httpx2 is not None else ())


def _provider_call(provider: str, request: httpx.Request, metrics: _metrics.Metrics | None
                   ) -> RawProviderCall:
    try:
        body: bytes | None = request.content
    except _NOT_READ:  # a streamed upload: the model stays "unknown"
        body = None
    return RawProviderCall(provider, body, metrics)


def _settings(registry: CollectorRegistry | None, providers: Mapping[str, str] | None
              ) -> tuple[_metrics.Metrics | None, dict[str, str]]:
    """Checked at configuration time; provider hosts are bare host names, lower-cased."""
    if providers is not None and not isinstance(providers, Mapping):
        raise TypeError(f"providers must map host names to provider names, got {providers!r}")
    hosts: dict[str, str] = {}
    for host, name in (providers or {}).items():
        if not isinstance(host, str) or not isinstance(name, str):
            raise TypeError(f"providers must map str to str, got {host!r}: {name!r}")
        if not host or not name or any(c in host for c in "/: \t\r\n"):
            raise ValueError(f"providers entry {host!r}: {name!r} must map a bare host name "
                             "(no scheme, port or path) to a non-empty provider name")
        hosts[host.lower()] = name
    return (None if registry is None else _metrics.metrics_for(registry)), hosts


class _Call:
    """One request in flight, then the response's stream: recorded once, at its end or close.

    Made concrete per package (``_HttpxCall``), as each checks its own byte-stream types.
    """

    __slots__ = ("chunks", "done", "first", "provider", "request", "status", "stream", "trace")

    def __init__(self, request: httpx.Request, wrapper: _Wrapper[Any]) -> None:
        self.stream: Any = None
        self.trace = trace_context.get()
        if self.trace is not None:  # outside a trace: no headers, and no trace started
            for name, value in ClientRequest.headers():
                request.headers[name] = value
        host, port = request.url.host, request.url.port  # port is None for the scheme's default
        self.request = ClientRequest(request.method, host_label(host, port), wrapper.metrics)
        provider = wrapper.providers.get(host) if wrapper.providers else None
        trace = self.trace
        if (provider is not None and trace is not None and trace.usage is not None
                and not trace.usage.closed):
            # a decorator or an SDK integration observes this call already: counted there
            provider = None
        self.provider = (None if provider is None
                         else _provider_call(provider, request, wrapper.metrics))
        self.status: int | None = None
        self.first = True
        self.done = False  # the body was read to its end

    def attach(self, response: httpx.Response, kind: type[Any]) -> httpx.Response:
        """Take over ``response.stream``; a body already read (mocks) is recorded now."""
        self.status = response.status_code
        if not response.is_closed and isinstance(response.stream, kind):
            # the package's own byte-stream type: made concrete per package (_HttpxCall)
            self.stream, response.stream = response.stream, cast(Any, self)
            return response
        has_body = self.provider is not None and hasattr(response, "_content")
        self.finish(self.status, None, response.content if has_body else None)
        return response

    def seen(self, chunk: bytes) -> bytes:
        """Pass a chunk to the provider observer; its failures never reach the reader."""
        try:
            if self.first:
                self.first = False
                self.provider.first_chunk()  # type: ignore[union-attr]
            self.provider.chunk(chunk)  # type: ignore[union-attr]
        except Exception as err:
            _metrics.report_internal_error("httpx_provider", err)
        return chunk

    def end(self, exc: BaseException) -> None:
        """Reading stopped: the body's end, or an error (labelled by its type, not the status)."""
        if isinstance(exc, (StopIteration, StopAsyncIteration)):
            self.done = True
            self.finish(self.status, None)
        else:
            self.finish(None, exc)

    def finish(self, status: int | None, exc: BaseException | None,
               body: bytes | None = None) -> None:
        """Record once, with the request's own trace current (it labels the exemplar).

        Before the body's end (a close, a dropped response) a provider call was abandoned.
        """
        if self.request.finished:
            return
        token = None if trace_context.get() is self.trace else trace_context.set(self.trace)
        try:
            self.request.finish(status, exc)
            if self.provider is not None:
                try:
                    self.provider.finish(status, exc, body,
                                         abandoned=exc is None and body is None and not self.done)
                except Exception as err:
                    _metrics.report_internal_error("httpx_provider", err)
        finally:
            if token is not None:
                trace_context.reset(token)

    # Iterator objects, not generators: an abandoned read leaves nothing to finalise.
    def __iter__(self) -> Iterator[bytes]:
        self.chunks = iter(self.stream)
        return self

    def __next__(self) -> bytes:
        try:
            chunk: bytes = next(self.chunks)
        except BaseException as exc:
            self.end(exc)
            raise
        return chunk if self.provider is None else self.seen(chunk)

    def __aiter__(self) -> AsyncIterator[bytes]:
        self.chunks = self.stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self.chunks.__anext__()
        except BaseException as exc:
            self.end(exc)
            raise
        return chunk if self.provider is None else self.seen(chunk)

    def close(self) -> None:
        self.finish(self.status, None)
        self.stream.close()

    async def aclose(self) -> None:
        self.finish(self.status, None)  # before awaiting, so a cancelled close still records
        await self.stream.aclose()

    def __del__(self) -> None:  # a response dropped without being closed
        if self.stream is not None:
            self.finish(self.status, None)


class _HttpxCall(_Call, httpx.SyncByteStream, httpx.AsyncByteStream):
    __slots__ = ()


class _Wrapper(Generic[T]):
    """What both transports share: the wrapped transport and the settings."""

    _call: type[_Call] = _HttpxCall

    def __init__(self, transport: T, *, registry: CollectorRegistry | None = None,
                 providers: Mapping[str, str] | None = None) -> None:
        self.transport = transport
        self.metrics, self.providers = _settings(registry, providers)

    def _start(self, request: httpx.Request) -> _Call | None:
        try:
            return self._call(request, self)
        except Exception as err:  # our bookkeeping failed: the request goes out unobserved
            _metrics.report_internal_error("httpx", err)
            return None


class _SyncTransport(_Wrapper[Any]):
    """Wraps any sync transport: trace headers on each request, client metrics per response."""

    _stream: type[Any] = httpx.SyncByteStream

    def handle_request(self, request: Any) -> Any:
        call = self._start(request)
        try:
            response = self.transport.handle_request(request)
        except BaseException as exc:
            if call is not None:
                call.finish(None, exc)
            raise
        return response if call is None else call.attach(response, self._stream)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self: T) -> T:
        self.transport.__enter__()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *args: Any, **kwargs: Any) -> None:
        self.transport.__exit__(*args, **kwargs)


class _AsyncTransport(_Wrapper[Any]):
    """Wraps any async transport: trace headers on each request, client metrics per response."""

    _stream: type[Any] = httpx.AsyncByteStream

    async def handle_async_request(self, request: Any) -> Any:
        call = self._start(request)
        try:
            response = await self.transport.handle_async_request(request)
        except BaseException as exc:
            if call is not None:
                call.finish(None, exc)
            raise
        return response if call is None else call.attach(response, self._stream)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self: T) -> T:
        await self.transport.__aenter__()  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *args: Any, **kwargs: Any) -> None:
        await self.transport.__aexit__(*args, **kwargs)


class InstrumentedTransport(_SyncTransport, httpx.BaseTransport):
    """Wraps any sync httpx transport: trace headers on each request, client metrics."""


class AsyncInstrumentedTransport(_AsyncTransport, httpx.AsyncBaseTransport):
    """Wraps any async httpx transport: trace headers on each request, client metrics."""


#: (sync client type, its instrumented transport, async client type, its transport)
_KINDS: list[tuple[type[Any], type[Any], type[Any], type[Any]]] = [
    (httpx.Client, InstrumentedTransport, httpx.AsyncClient, AsyncInstrumentedTransport)]

if httpx2 is not None:
    class _Httpx2Call(_Call, httpx2.SyncByteStream, httpx2.AsyncByteStream):
        __slots__ = ()

    class Httpx2InstrumentedTransport(_SyncTransport, httpx2.BaseTransport):
        """``InstrumentedTransport`` for ``httpx2`` transports."""

        _call = _Httpx2Call
        _stream = httpx2.SyncByteStream

    class AsyncHttpx2InstrumentedTransport(_AsyncTransport, httpx2.AsyncBaseTransport):
        """``AsyncInstrumentedTransport`` for ``httpx2`` transports."""

        _call = _Httpx2Call
        _stream = httpx2.AsyncByteStream

    _KINDS.append((httpx2.Client, Httpx2InstrumentedTransport, httpx2.AsyncClient,
                   AsyncHttpx2InstrumentedTransport))
    __all__ += ["AsyncHttpx2InstrumentedTransport", "Httpx2InstrumentedTransport"]


def _transport_for(client: Any) -> type[Any] | None:
    for sync_client, sync_kind, async_client, async_kind in _KINDS:
        if isinstance(client, sync_client):
            return sync_kind
        if isinstance(client, async_client):
            return async_kind
    return None


def instrument_client(client: C, *, registry: CollectorRegistry | None = None,
                      providers: Mapping[str, str] | None = None) -> C:
    """Wrap each transport of ``client`` (default and mounts) once, and return the client.

    ``client`` is an ``httpx`` or ``httpx2`` ``Client`` or ``AsyncClient``. Calling it
    again wraps nothing twice; the latest call's settings apply.
    """
    settings = _settings(registry, providers)  # a bad setting raises before the client changes
    kind = _transport_for(client)
    if kind is None:
        raise TypeError("instrument_client expects an httpx (or httpx2) Client or AsyncClient, "
                        f"got {client!r}")

    def wrap(transport: Any) -> Any:
        wrapped = transport if isinstance(transport, kind) else kind(transport)
        wrapped.metrics, wrapped.providers = settings
        return wrapped

    target: Any = client
    target._transport = wrap(target._transport)
    target._mounts = {pattern: None if transport is None else wrap(transport)
                      for pattern, transport in target._mounts.items()}
    return client
