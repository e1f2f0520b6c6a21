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

from instrument._context import _current
from instrument._engine import status_of
from instrument._exposition import make_asgi_app
from instrument._gate import Gate, Unmeasured, merge_headers, raw_headers
from instrument._http import ServerRequest
from instrument._propagation import extract_asgi

__all__ = ["InstrumentMiddleware", "instrument_app"]

A = TypeVar("A", bound=ASGIApp)


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
                 registry: CollectorRegistry | None = None, gate: Gate | None = None) -> None:
        """``gate``: rules already checked (``instrument_app`` checks them once, up front)."""
        self.app = app
        self.gate = gate or Gate(metrics_path=metrics_path, access_log=access_log,
                                 exclude_paths=exclude_paths, registry=registry,
                                 extract=extract_asgi)
        path = self.gate.metrics_path
        self._metrics_app = make_asgi_app(self.gate.registry, path) if path else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # websocket, lifespan
            return
        root, path = scope.get("root_path", ""), scope["path"]
        local = path[len(root):] if root and path.startswith(root) else path
        req = self.gate.open(scope["method"], local, scope.get("headers", ()),
                             scope.get("client"), path)
        if isinstance(req, Unmeasured):
            if req.nested:
                await self.app(scope, receive, send)
            elif req.metrics_route is not None and self._metrics_app is not None:
                await self._untimed({**scope, "path": local}, receive, send, self._metrics_app)
            else:
                await self._untimed(scope, receive, send, self.app)
            return
        complete = False

        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not complete:  # servers also say so once the response is complete
                    req.client_disconnected()
            elif req.route is None:  # routing is done once the handler reads the body
                _resolve(req, scope, root)
            return message

        async def send_observed(message: Message) -> None:
            nonlocal complete
            kind = message["type"]
            if kind == "http.response.body":
                if body := message.get("body"):
                    req.body_sent(body)
                last = not message.get("more_body", False)
            else:
                last = kind == "http.response.pathsend"
                if kind == "http.response.start":
                    # a new list: the app may send its own again (Starlette's raw_headers)
                    message["headers"], sse = merge_headers(message.get("headers", ()),
                                                            req.raw_response_headers())
                    if req.route is None:  # routing is over: a template, or unmatched
                        req.set_route(_template(scope, root))
                    req.response_started(message["status"], sse)
            try:
                await send(message)
            except OSError:  # the client is gone (uvicorn's ClientDisconnected is an OSError)
                req.client_disconnected()
                raise
            if last:
                complete = True
                # Starlette runs BackgroundTasks after this send: stop the clock now. A 5xx
                # waits for the app to return, so the exception behind it is recorded too.
                if (req.status or 500) < 500:
                    req.finish()

        token = req.enter()
        try:
            await self.app(scope, receive_observed, send_observed)
        except BaseException as exc:
            if not (isinstance(exc, ClientDisconnect) or status_of(exc) == "cancelled"):
                req.failed(exc)
            elif not complete:  # e.g. Hypercorn cancels the app when the client leaves
                req.client_disconnected()
            raise
        finally:
            if not req.finished:
                if req.route is None:  # no response (cancelled, or the app sent none)
                    _resolve(req, scope, root)
                req.finish()
            _current.reset(token)

    async def _untimed(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Serve unmeasured (no trace counted); the trace ID still goes in and out."""
        trace, pairs = self.gate.untimed(scope.get("headers", ()))
        headers = raw_headers(pairs)

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"], _sse = merge_headers(message.get("headers", ()), headers)
            await send(message)

        token = _current.set(trace)
        try:
            await app(scope, receive, send_traced)
        finally:
            _current.reset(token)


def instrument_app(app: A, *, metrics_path: str | None = "/metrics", access_log: bool = True,
                   exclude_paths: Iterable[str] = (),
                   registry: CollectorRegistry | None = None) -> A:
    """Instrument a Starlette/FastAPI app, outermost; idempotent; returns the app.
    Any other ASGI app comes back wrapped in ``InstrumentMiddleware``: serve that."""
    if isinstance(app, InstrumentMiddleware) or getattr(app, "_instrument_gate", None):
        return app
    gate = Gate(metrics_path=metrics_path, access_log=access_log, exclude_paths=exclude_paths,
                registry=registry, extract=extract_asgi)  # bad options refused here
    if not isinstance(app, Starlette):
        return InstrumentMiddleware(app, gate=gate)  # type: ignore[return-value]
    build = app.build_middleware_stack

    def build_instrumented() -> ASGIApp:  # around ServerErrorMiddleware too: it sees the 500
        return InstrumentMiddleware(build(), gate=gate)

    app.build_middleware_stack = build_instrumented  # type: ignore[method-assign]
    if app.middleware_stack is not None:  # already serving: wrap the stack it built
        app.middleware_stack = InstrumentMiddleware(app.middleware_stack, gate=gate)
    app._instrument_gate = gate  # type: ignore[attr-defined]
    return app
