"""WSGI: the middleware a WSGI framework's adapter configures (how to read its route).

A request ends with its response body (streamed bodies are timed to their end); the
work the server's ``close()`` runs (Flask's ``call_on_close``) comes after the clock,
in the trace. The app call, each body step and ``close()`` run in the request's own
context, so the server's context is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextvars import Context, Token, copy_context
from typing import Any

from instrument import _metrics
from instrument._context import TraceContext
from instrument._exposition import make_wsgi_app
from instrument._gate import Gate, Unmeasured, merge_headers
from instrument._http import ServerRequest

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_END: Any = object()


class _Response:
    """One request's ``start_response`` (for the app) and body (for the server)."""

    __slots__ = ("_closed", "_context", "_exhausted", "_headers", "_inner", "_req",
                 "_route_of", "_server_token", "_start_response")

    def __init__(self, req: ServerRequest, start_response: StartResponse,
                 context: Context, route_of: Callable[[], str | None]) -> None:
        self._req = req
        self._route_of = route_of
        self._start_response = start_response
        self._context = context
        self._inner: Iterable[bytes] = ()
        self._exhausted = self._closed = False
        self._server_token: Token[TraceContext | None] | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        req = self._req
        self._headers, sse = merge_headers(headers, req.response_headers())
        try:
            if req.route is None:  # routing is over: a template, or __unmatched__
                req.set_route(self._route_of())
            code = int(status[:3])
            if req.status is None:
                req.response_started(code, sse)
            else:  # an error handler replaced a response not yet sent
                req.status = code
        except Exception as err:
            _metrics.report_internal_error("wsgi_start_response", err)
        return self._start_response(status, self._headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        # The server reads the body after the app call: each step runs in the request's
        # context again. A generator, so its end raises no StopIteration.
        req, it, run = self._req, iter(self._inner), self._context.run
        try:
            while (chunk := run(next, it, _END)) is not _END:
                req.body_sent(chunk)
                yield chunk
        except Exception as err:  # the app's body failed: its error, not the client's
            req.failed(err)
            raise
        self._exhausted = True  # not in a `finally`: a hang-up closes this generator too
        req.finish()  # the whole body is out: the clock stops before close() runs anything

    def close(self) -> None:
        """Record the request (once), then close the app's iterable, in the trace."""
        if self._closed:
            return
        self._closed = True
        req = self._req
        if not req.finished:  # else the body's end has recorded it
            if not self._exhausted and req.error is None:
                req.client_disconnected()
            req.finish()
        inner, self._inner = self._inner, ()  # a server's file wrapper refers back to us
        try:
            if (close := getattr(inner, "close", None)) is not None:
                self._context.run(close)  # call_on_close work: after the clock, in the trace
        finally:
            if (token := self._server_token) is not None:
                self._server_token = None
                req.exit(token)

    def __del__(self) -> None:  # never closed by the server: count it, leave contexts alone
        if not getattr(self, "_closed", True):
            self._req.finish()


class _Closing:
    """An empty body whose ``close()`` closes what the server was given."""

    __slots__ = ("close",)

    def __init__(self, close: Callable[[], Any]) -> None:
        self.close = close

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


def _pass_file(response: _Response, inner: Any) -> Iterable[bytes]:
    """Give the server back its own ``wsgi.file_wrapper``, so it can ``sendfile()`` it (no app
    code runs meanwhile); its ``close()``, once the file is out, ends the request."""
    try:
        close = getattr(inner, "close", None)
        inner.close = response.close
    except AttributeError:  # a wrapper that takes no attributes: served like any body
        return response
    response._inner = _Closing(close) if close is not None else ()
    response._exhausted = True  # ended by close(), not a hang-up
    for name, value in getattr(response, "_headers", ()):
        if name.lower() == "content-length" and value.isascii() and value.isdigit():
            response._req.bytes_sent = int(value)
    file: Iterable[bytes] = inner
    return file



class WSGIMiddleware:
    """WSGI middleware: trace ID in and out, request metrics, access log, metrics routes.

    ``route_of()`` (called in the request's context once the app has routed it) gives the
    route template, None for unmatched; a framework's adapter passes its own.
    """

    def __init__(self, app: WSGIApp, gate: Gate,
                 route_of: Callable[[], str | None] = lambda: None) -> None:
        self.app, self.gate, self.route_of = app, gate, route_of
        self._metrics_app = make_wsgi_app(gate.registry, gate.metrics_path or "/metrics")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO") or "/"
        gate, wsgi_app = self.gate, self.app
        req = gate.open(environ.get("REQUEST_METHOD", "GET"), path, environ,
                        (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"))
                        if gate.access_log else None, environ.get("SCRIPT_NAME", "") + path)
        if isinstance(req, Unmeasured):
            if req.nested:
                return wsgi_app(environ, start_response)
            return gate.serve_untimed_wsgi(environ, start_response, wsgi_app
                                           if req.metrics_route is None else self._metrics_app)
        # The request's own context: the app call, each body step and close() run in it, so
        # the trace is bound there once (never reset: the context is dropped with the
        # response) and the server's context is never touched.
        context = copy_context()
        context.run(req.enter)
        response = _Response(req, start_response, context, self.route_of)
        if "werkzeug.socket" in environ or "gunicorn.socket" in environ:
            # werkzeug's development server writes its access line from its own context, as
            # the body starts, gunicorn's after the body and before close(): bound there too
            # (until close) so that line carries the trace.
            response._server_token = req.enter()
        try:
            inner = response._inner = context.run(wsgi_app, environ, response.start_response)
        except BaseException as err:  # PROPAGATE_EXCEPTIONS: the server makes the 500
            req.failed(err)
            response.close()
            raise
        if (file_wrapper := environ.get("wsgi.file_wrapper")) is not None and (
                type(inner) is file_wrapper):  # send_file() under gunicorn, mod_wsgi, ...
            return _pass_file(response, inner)
        return response
