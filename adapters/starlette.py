"""FastAPI/Starlette adapter: pure ASGI middleware driving the core's request observer.

``instrument_app`` wraps a Starlette/FastAPI app's whole stack, ``ServerErrorMiddleware``
included, so it sees that 500; ``InstrumentMiddleware`` wraps any ASGI app (docs/adapters.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

try:
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect
    from starlette.routing import Host, Mount
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - tested with sys.modules patched
    raise ImportError("instrument.adapters.starlette needs Starlette: "
                      "pip install 'llm-instrument[fastapi]'") from exc

from prometheus_client import CollectorRegistry

from instrument import _metrics
from instrument._context import _current, make_context
from instrument._exposition import make_asgi_app
from instrument._http import ServerRequest
from instrument._loggate import log_enabled
from instrument._propagation import (
    extract_asgi,
    extract_context,
    incoming_trace,
    trace_headers,
)
from instrument._span import outcome_of

__all__ = ["InstrumentMiddleware", "instrument_app"]

A = TypeVar("A", bound=ASGIApp)
_TRACE_NAMES = frozenset({b"x-trace-id", b"traceparent"})
_SSE = "text/event-stream"


def _add_headers(message: Message, trace: list[tuple[bytes, bytes]]) -> bool:
    """Put the trace headers on a response start (replacing the app's); True for an SSE body.

    Names are compared case-insensitively (not every app lower-cases them), but only
    lower-cased when their length matches.
    """
    sse = False
    clash = False
    headers = message.get("headers", ())
    for name, value in headers:
        size = len(name)
        if size == 12:
            if name.lower() == b"content-type":
                sse = value.startswith(b"text/event-stream")
        elif (size == 10 or size == 11) and name.lower() in _TRACE_NAMES:
            clash = True
    if clash:  # the app set them itself: the request's trace wins, never two values
        headers = [pair for pair in headers if pair[0].lower() not in _TRACE_NAMES]
    # a new list: the app may send its own again (Starlette's raw_headers)
    message["headers"] = [*headers, *trace]
    return sse


def _template(scope: Scope, root: str) -> str | None:
    """The matched route's template with its mount prefix, or None while not (yet) known."""
    route = scope.get("route")
    if route is None:
        return None
    root_path = scope.get("root_path", "")
    prefix = root_path[len(root):]  # what the mounts in between consumed
    fastapi = scope.get("fastapi")
    if isinstance(fastapi, dict) and fastapi.get("effective_route_context") is not None:
        return _find_template(scope, route, root_path, prefix)  # include_router: per context
    # A route's template under a given prefix never changes: keep it on the route itself
    # (routes live as long as their app; some, like FastAPI's, are unhashable).
    known: dict[str, str] | None = getattr(route, "_instrument_templates", None)
    found = known.get(prefix) if known is not None else None
    if found is None:
        found = _find_template(scope, route, root_path, prefix)
        if found is not None and not isinstance(route, (Mount, Host)):
            if known is None:
                known = {}
                try:
                    route._instrument_templates = known
                except AttributeError:  # a route class with __slots__: no caching
                    return found
            if len(known) < 64:
                known[prefix] = found
    return found


def _find_template(scope: Scope, route: Any, root_path: str, prefix: str) -> str | None:
    fastapi = scope.get("fastapi")
    if isinstance(fastapi, dict):  # FastAPI >= 0.116 keeps include_router prefixes here
        context = fastapi.get("effective_route_context")
        if context is not None and getattr(context, "original_route", None) is route:
            return f"{prefix}{context.path_format}"
    if isinstance(route, (Mount, Host)):  # its own router decides, if it has one
        if route.routes or isinstance(route, Host) or scope.get("endpoint") is not route.app:
            return None
        return f"{prefix.removesuffix(route.path)}{route.path_format}"  # opaque: /static/{path}
    path = scope.get("path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    regex, template = getattr(route, "path_regex", None), getattr(route, "path_format", None)
    if regex is None or template is None or regex.match(path) is None:
        return None  # a route reused under a prefix it does not know: wait for a better one
    return f"{prefix}{template}"


def _resolve(observer: ServerRequest, scope: Scope, root: str) -> None:
    template = _template(scope, root)
    if template is not None:
        observer.set_route(template)


class InstrumentMiddleware:
    """Pure ASGI middleware: trace ID in and out, request metrics, access log, metrics routes.

    ``metrics_path`` (None: not served) with ``/health`` and ``/summary``, and
    ``exclude_paths`` (exact, or a prefix ending in ``*``) are not measured but
    carry ``X-Trace-ID``. WebSocket and lifespan scopes pass through untouched.
    """

    def __init__(self, app: ASGIApp, *, metrics_path: str | None = "/metrics",
                 access_log: bool = True, exclude_paths: Iterable[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.access_log = access_log
        self._metrics = None if registry is None else _metrics.metrics_for(registry)
        self._metrics_app = make_asgi_app(registry, metrics_path) if metrics_path else None
        base = (metrics_path or "").rstrip("/")
        self._metrics_paths = frozenset(
            (base, base + "/", base + "/health", base + "/summary") if metrics_path else ())
        excluded = list(exclude_paths)
        self._prefixes = tuple(p[:-1] for p in excluded if p.endswith("*"))
        # served unmeasured: the metrics routes and the exact exclusions (one lookup)
        self._unmeasured = self._metrics_paths | {p for p in excluded if not p.endswith("*")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or ((ctx := _current.get()) is not None
                                       and ctx.request is not None):
            await self.app(scope, receive, send)  # websocket, lifespan, an instrumented mount
            return
        root, path = scope.get("root_path", ""), scope["path"]
        route_path = path[len(root):] if root and path.startswith(root) else path
        if route_path in self._unmeasured or (
                self._prefixes and route_path.startswith(self._prefixes)):
            if route_path in self._metrics_paths and self._metrics_app is not None:
                await _untimed({**scope, "path": route_path}, receive, send, self._metrics_app)
            else:
                await _untimed(scope, receive, send, self.app)
            return
        # the client's address is only formatted for an access line that will be written
        client = scope.get("client") if self.access_log and log_enabled(20) else None
        observer = ServerRequest(scope["method"], path, scope.get("headers", ()),
                                 f"{client[0]}:{client[1]}" if client else None,
                                 self.access_log, self._metrics, extract_asgi)
        complete = False

        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not complete:  # servers also say so once the response is complete
                    observer.client_disconnected()
            elif observer.route is None:  # routing is done once the handler reads the body
                _resolve(observer, scope, root)
            return message

        async def send_observed(message: Message) -> None:
            nonlocal complete
            kind = message["type"]
            if kind == "http.response.body":
                if body := message.get("body"):
                    if observer.sse:
                        observer.body_sent(body if type(body) is bytes else bytes(body))
                    else:
                        observer.bytes_sent += len(body)
                last = not message.get("more_body", False)
            else:
                last = kind == "http.response.pathsend"
                if kind == "http.response.start":
                    sse = _add_headers(message, observer.raw_response_headers())
                    if observer.route is None:  # routing is over: a template, or unmatched
                        observer.set_route(_template(scope, root))
                    observer.response_started(message["status"], _SSE if sse else None)
            try:
                await send(message)
            except OSError:  # the client is gone (uvicorn's ClientDisconnected is an OSError)
                observer.client_disconnected()
                raise
            if last:
                complete = True
                # Starlette runs BackgroundTasks after this send: stop the clock now. A 5xx
                # waits for the app to return, so the exception behind it is recorded too.
                if (observer.status or 500) < 500:
                    observer.finish()

        # the request's trace, reset below in this same task
        token = _current.set(make_context((observer.trace_id, observer.span_id, None, observer)))
        try:
            await self.app(scope, receive_observed, send_observed)
        except BaseException as exc:
            if not (isinstance(exc, ClientDisconnect) or outcome_of(exc) == "cancelled"):
                observer.failed(exc)
            elif not complete:  # e.g. Hypercorn cancels the app when the client leaves
                observer.client_disconnected()
            raise
        finally:
            if not observer.finished:
                if observer.route is None:  # no response (cancelled, or the app sent none)
                    _resolve(observer, scope, root)
                observer.finish()
            _current.reset(token)


async def _untimed(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    """Serve without measuring (no trace counted); the trace ID still goes in and out."""
    token = _current.set(incoming_trace(*extract_context(scope.get("headers", ()))))
    try:
        trace = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                 for name, value in trace_headers()]

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                _add_headers(message, trace)
            await send(message)

        await app(scope, receive, send_traced)
    finally:
        _current.reset(token)


def instrument_app(app: A, *, metrics_path: str | None = "/metrics", access_log: bool = True,
                   exclude_paths: Iterable[str] = (),
                   registry: CollectorRegistry | None = None) -> A:
    """Instrument a Starlette/FastAPI app, outermost; idempotent; returns the app.
    Any other ASGI app comes back wrapped in ``InstrumentMiddleware``: serve that."""
    options: dict[str, Any] = {"metrics_path": metrics_path, "access_log": access_log,
                               "exclude_paths": tuple(exclude_paths), "registry": registry}
    if isinstance(app, InstrumentMiddleware) or getattr(app, "_instrument_options", None):
        return app
    if not isinstance(app, Starlette):
        return InstrumentMiddleware(app, **options)  # type: ignore[return-value]
    build = app.build_middleware_stack

    def build_instrumented() -> ASGIApp:  # around ServerErrorMiddleware too: it sees the 500
        return InstrumentMiddleware(build(), **options)

    app.build_middleware_stack = build_instrumented  # type: ignore[method-assign]
    if app.middleware_stack is not None:  # already serving: wrap the stack it built
        app.middleware_stack = InstrumentMiddleware(app.middleware_stack, **options)
    app._instrument_options = options  # type: ignore[attr-defined]
    return app
