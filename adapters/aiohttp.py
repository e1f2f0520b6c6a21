"""aiohttp adapter: ``instrument_app`` for servers, ``client_trace_config`` for ``ClientSession``.

Server: a middleware placed first, plus ``on_response_prepare``, which fires for every response
(handler's, router 404/405, aiohttp's 500, streams) and hooks its ``write_eof``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Iterable
from types import SimpleNamespace

try:
    import aiohttp
    from aiohttp import web
    from aiohttp.typedefs import Handler
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("instrument.adapters.aiohttp needs aiohttp: "
                      "pip install 'llm-instrument[aiohttp]'") from exc
from prometheus_client import CollectorRegistry

from instrument import _metrics
from instrument._context import current_request, trace_context
from instrument._exposition import respond
from instrument._gate import Gate, Unmeasured
from instrument._http import ClientRequest, ServerRequest, host_label

__all__ = ["client_trace_config", "instrument_app"]

_INSTRUMENTED = web.AppKey("instrument_instrumented", bool)
#: an unmeasured request's trace headers, for _on_prepare
_UNTIMED = web.RequestKey("instrument_trace_headers", list)
#: a measured request's bound trace, once the middleware returned before the body ended
_TOKEN = web.RequestKey("instrument_token", contextvars.Token)


def instrument_app(app: web.Application, *, metrics_path: str | None = "/metrics",
                   access_log: bool = True, exclude_paths: Iterable[str] = (),
                   registry: CollectorRegistry | None = None) -> web.Application:
    """Trace, measure and log every request of ``app``; serve the metrics routes. Idempotent."""
    if app.get(_INSTRUMENTED):
        return app
    if app.frozen or app.middlewares.frozen:
        raise RuntimeError("instrument_app() must be called before the aiohttp application "
                           "starts (this one is frozen): call it right after building the app")
    gate = Gate(metrics_path=metrics_path, access_log=access_log, exclude_paths=exclude_paths,
                registry=registry)
    stopping = _Stopping()

    @web.middleware
    async def instrument_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await handler(request)
        obs = gate.open(request.method, request.path, request.headers, request.remote)
        if isinstance(obs, Unmeasured):
            if obs.nested:
                return await handler(request)
            trace, request[_UNTIMED] = gate.untimed(request.headers)
            token = trace_context.set(trace)
            try:
                if obs.metrics_route is not None and request.method in ("GET", "HEAD"):
                    out = respond(obs.metrics_route, request.headers.get("Accept"), registry,
                                  request.query_string)
                    return web.Response(body=out.body, status=out.status,
                                        headers={"Content-Type": out.content_type})
                return await handler(request)
            finally:
                trace_context.reset(token)
        resource = request.match_info.route.resource  # None for the router's 404/405
        obs.set_route(None if resource is None else resource.canonical)
        stopping.open.add(obs)  # until its task is done (or, without one, the middleware)
        if task := asyncio.current_task():  # aiohttp runs each request in a task of its own
            task.add_done_callback(lambda _: _abandoned(obs, request, stopping))
        # In that task the trace stays bound until the task ends (its context is the task's
        # own copy): aiohttp's access line, written after write_eof, carries the trace ID.
        token = obs.enter()
        try:
            return await handler(request)
        except BaseException as exc:
            # an HTTPException is sent as a response; aiohttp answers any other error with a
            # 500, which goes through the signal
            if (not isinstance(exc, web.HTTPException)
                    and not _cut_short(obs, request, exc, stopping) and not obs.disconnected):
                obs.failed(exc)
            if obs.disconnected or obs.server_cancelled or obs.status is not None:
                obs.finish()  # headers already out, or nobody listening: nothing more to send
            raise
        finally:
            if task is None:  # no task of its own: unbind now, or when the body ends (_end)
                stopping.open.discard(obs)
                if obs.finished:
                    obs.exit(token)
                else:
                    request[_TOKEN] = token

    async def shutting_down(app: web.Application) -> None:
        # aiohttp is about to cancel the handlers still running and close their connections
        stopping.now = True
        for obs in list(stopping.open):
            obs.server_stopping()

    app.middlewares.insert(0, instrument_middleware)
    app.on_response_prepare.append(functools.partial(_on_prepare, stopping))
    app.on_shutdown.append(shutting_down)
    app[_INSTRUMENTED] = True
    return app


def _gone(request: web.BaseRequest) -> bool:
    return request.transport is None or request.transport.is_closing()


class _Stopping:
    """Whether the app's shutdown has begun (``on_shutdown``): from then on aiohttp cancels
    the handlers still running and closes their connections itself. ``open``: the requests
    whose task has not ended (``set.add``/``discard`` are atomic: no lock)."""

    __slots__ = ("now", "open")

    def __init__(self) -> None:
        self.now = False
        self.open: set[ServerRequest] = set()


def _cut_short(obs: ServerRequest, request: web.BaseRequest, exc: BaseException,
               stopping: _Stopping) -> bool:
    """Tell ``obs`` why its response was cut short, if it was: the server cancelled it (its
    shutdown, or a cancellation while the client is still there), or the client left.
    False: not cut short (an error of the app's own)."""
    cut = isinstance(exc, (asyncio.CancelledError, ConnectionError)) or _gone(request)
    if cut and stopping.now:
        obs.cancelled()
    elif isinstance(exc, ConnectionError) or _gone(request):
        obs.client_disconnected()
    elif isinstance(exc, asyncio.CancelledError):
        obs.cancelled()
    return cut


async def _on_prepare(stopping: _Stopping, request: web.BaseRequest,
                      response: web.StreamResponse) -> None:
    """Trace headers out, status and content type in, the body's end hooked; once a request."""
    obs = current_request()
    try:
        if obs is None or obs.status is not None:  # unmeasured, or a second prepare
            for name, value in request.get(_UNTIMED) or ():
                response.headers[name] = value
            return
        for name, value in obs.response_headers():
            response.headers[name] = value
        obs.response_started(response.status, response.content_type == "text/event-stream")
        _watch(obs, request, response, stopping)
    except Exception as exc:
        _metrics.report_internal_error("aiohttp_prepare", exc)


def _watch(obs: ServerRequest, request: web.BaseRequest, response: web.StreamResponse,
           stopping: _Stopping) -> None:
    write, write_eof = response.write, response.write_eof  # shadowed on this instance only

    async def tracked_write(data: bytes | bytearray | memoryview) -> None:
        try:
            await write(data)
        except ConnectionError as exc:
            _cut_short(obs, request, exc, stopping)
            raise
        obs.body_sent(data)

    async def tracked_write_eof(data: bytes = b"") -> None:
        try:
            await write_eof(data)
            obs.body_sent(data)
        except BaseException as exc:
            if not _cut_short(obs, request, exc, stopping):
                obs.failed(exc)
            raise
        finally:
            if not obs.bytes_sent and request.method != "HEAD":  # Response, FileResponse
                obs.bytes_sent = response.content_length or 0
            _end(obs, request)

    response.write = tracked_write  # type: ignore[method-assign]
    response.write_eof = tracked_write_eof  # type: ignore[method-assign]


def _end(obs: ServerRequest, request: web.BaseRequest) -> None:
    # The trace stays bound until the middleware has returned too: the handler may run on
    # after its own write_eof, and aiohttp's 500 and error log then carry the trace ID.
    obs.finish()
    if (token := request.get(_TOKEN)) is not None:
        obs.exit(token)


def _abandoned(obs: ServerRequest, request: web.BaseRequest, stopping: _Stopping) -> None:
    """The request's task is done: a response that never completed (prepare failed) ends here,
    and so does a ``@track_sse`` stream its handler dropped mid-send."""
    stopping.open.discard(obs)
    obs.end_streams()
    if not obs.finished:
        if _gone(request):
            obs.client_disconnected()
        obs.finish()


def client_trace_config(*, registry: CollectorRegistry | None = None) -> aiohttp.TraceConfig:
    """A ``TraceConfig`` sending the trace headers and recording the client metrics.

    The duration runs until the response's connection is released: body read to the end,
    or response released/closed early (the hook aiohttp's own read timeout uses)."""
    metrics = None if registry is None else _metrics.metrics_for(registry)
    config = aiohttp.TraceConfig()

    async def on_start(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                       params: aiohttp.TraceRequestStartParams) -> None:
        try:
            for name, value in ClientRequest.headers():
                params.headers[name] = value
            url = params.url
            host = host_label(url.host or "", None if url.is_default_port() else url.port)
            call, context = ClientRequest(params.method, host, metrics), contextvars.copy_context()

            def finish(status: int | None, exc: BaseException | None = None) -> None:
                context.run(call.finish, status, exc)  # maybe from a connection callback

            ctx.instrument_finish = finish
        except Exception as exc:
            _metrics.report_internal_error("aiohttp_client", exc)

    async def on_end(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                     params: aiohttp.TraceRequestEndParams) -> None:
        finish, response = getattr(ctx, "instrument_finish", None), params.response
        if finish is None:
            return
        if response.connection is None or response.status == 101:  # body read, or upgraded
            finish(response.status)
        else:
            response.connection.add_callback(lambda: finish(response.status))

    async def on_exception(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                           params: aiohttp.TraceRequestExceptionParams) -> None:
        finish, exc = getattr(ctx, "instrument_finish", None), params.exception
        if finish is not None:  # raise_for_status: a real response, labelled by its status
            status = exc.status if isinstance(exc, aiohttp.ClientResponseError) else None
            finish(status or None, exc)

    config.on_request_start.append(on_start)
    config.on_request_end.append(on_end)
    config.on_request_exception.append(on_exception)
    return config
