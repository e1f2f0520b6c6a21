"""ASGI: the middleware every ASGI framework's adapter configures (route template, disconnects).

It translates the ASGI messages into the request gate's and the observer's calls: the
trace is bound for the app, the response start carries the trace headers and sets the
route, each body chunk is counted, and the request ends with the last one (before
background tasks) or when the client leaves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry

from instrument._context import trace_context
from instrument._engine import status_of
from instrument._exposition import make_asgi_app
from instrument._gate import Gate, Unmeasured, merge_headers
from instrument._http import ServerRequest
from instrument._propagation import extract_asgi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIMiddleware:
    """ASGI middleware: trace ID in and out, request metrics, access log, metrics routes.

    ``metrics_path`` (None: not served) with ``/health`` and ``/summary``, and
    ``exclude_paths`` (exact, or a prefix ending in ``*``) are not measured but
    carry ``X-Trace-ID``. WebSocket and lifespan scopes pass through untouched.
    A framework's adapter says how to read its route template (``route_of``) and
    which of its exceptions mean the client left (``disconnect_errors``).
    """

    #: exceptions that mean the client left (not errors of the app)
    disconnect_errors: tuple[type[BaseException], ...] = ()

    @staticmethod
    def route_of(scope: Scope, root: str) -> str | None:
        """The route template once routing is done, else None (``__unmatched__`` at the end)."""
        return None

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
                await self.gate.serve_untimed_asgi({**scope, "path": local}, receive, send,
                                                   self._metrics_app)
            else:
                await self.gate.serve_untimed_asgi(scope, receive, send, self.app)
            return
        complete = False

        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not complete:  # servers also say so once the response is complete
                    req.client_disconnected()
            elif req.route is None:  # routing is done once the handler reads the body
                self._resolve(req, scope, root)
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
                        req.set_route(self.route_of(scope, root))
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
            if not (isinstance(exc, self.disconnect_errors) or status_of(exc) == "cancelled"):
                req.failed(exc)
            elif not complete:  # e.g. Hypercorn cancels the app when the client leaves
                req.client_disconnected()
            raise
        finally:
            if not req.finished:
                if req.route is None:  # no response (cancelled, or the app sent none)
                    self._resolve(req, scope, root)
                req.finish()
            trace_context.reset(token)

    def _resolve(self, req: ServerRequest, scope: Scope, root: str) -> None:
        template = self.route_of(scope, root)
        if template is not None:
            req.set_route(template)
