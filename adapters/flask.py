"""Flask adapter: WSGI middleware around ``app.wsgi_app`` driving the core request observer.

A request ends with its response body (streamed bodies are timed to their end); the
``call_on_close`` work the server's ``close()`` runs comes after the clock, in the trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextvars import Context, Token, copy_context
from typing import Any

try:
    from flask import Flask
    from flask.globals import _cv_request  # the request context variable (Flask >= 2.2)
    from werkzeug.wsgi import ClosingIterator
except ImportError as exc:
    raise ImportError("instrument.adapters.flask needs Flask: "
                      "pip install 'llm-instrument[flask]'") from exc

from prometheus_client import CollectorRegistry

from instrument import _metrics
from instrument._context import TraceContext, _current, current_request
from instrument._exposition import make_wsgi_app
from instrument._gate import Gate, Unmeasured, merge_headers
from instrument._http import ServerRequest
from instrument._metrics import gunicorn_child_exit  # the documented import path for gunicorn
from instrument._propagation import extract_wsgi

__all__ = ["gunicorn_child_exit", "instrument_app"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_END: Any = object()


class _Response:
    """One request's ``start_response`` (for the app) and body (for the server)."""

    __slots__ = ("_closed", "_context", "_exhausted", "_headers", "_inner", "_req",
                 "_server_token", "_start_response")

    def __init__(self, req: ServerRequest, start_response: StartResponse,
                 context: Context) -> None:
        self._req = req
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
            if req.route is None:  # no rule matched (a 404/405): __unmatched__
                rule = ctx.request.url_rule if (ctx := _cv_request.get(None)) is not None else None
                req.set_route(rule.rule if rule is not None else None)
            code = int(status[:3])
            if req.status is None:
                req.response_started(code, sse)
            else:  # an error handler replaced a response not yet sent
                req.status = code
        except Exception as err:
            _metrics.report_internal_error("flask_start_response", err)
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


def _pass_file(response: _Response, inner: Any) -> Iterable[bytes]:
    """Give the server back its own ``wsgi.file_wrapper``, so it can ``sendfile()`` it (no app
    code runs meanwhile); its ``close()``, once the file is out, ends the request."""
    try:
        close = getattr(inner, "close", None)
        inner.close = response.close
    except AttributeError:  # a wrapper that takes no attributes: served like any body
        return response
    response._inner = ClosingIterator((), close) if close is not None else ()
    response._exhausted = True  # ended by close(), not a hang-up
    for name, value in getattr(response, "_headers", ()):
        if name.lower() == "content-length" and value.isascii() and value.isdigit():
            response._req.bytes_sent = int(value)
    file: Iterable[bytes] = inner
    return file


def _untimed(gate: Gate, environ: Environ, start_response: StartResponse,
             app: WSGIApp) -> Iterable[bytes]:
    """Serve unmeasured (no trace counted either); the trace ID still goes in and out."""
    trace, extra = gate.untimed(environ)
    token = _current.set(trace)
    try:
        return app(environ, lambda status, headers, exc_info=None:
                   start_response(status, merge_headers(headers, extra)[0], exc_info))
    finally:
        _current.reset(token)


def instrument_app(app: Flask, *, metrics_path: str | None = "/metrics", access_log: bool = True,
                   exclude_paths: Iterable[str] = (),
                   registry: CollectorRegistry | None = None) -> Flask:
    """Instrument a Flask app: trace IDs in and out, HTTP metrics, access log, metrics routes.

    ``metrics_path=None`` mounts no metrics routes; ``exclude_paths`` (exact, or a prefix
    ending in ``*``) are served unmeasured but keep their trace ID. Idempotent.
    """
    if "instrument" in app.extensions:
        return app
    gate = Gate(metrics_path=metrics_path, access_log=access_log, exclude_paths=exclude_paths,
                registry=registry, extract=extract_wsgi)
    wsgi_app, metrics_app = app.wsgi_app, make_wsgi_app(registry, metrics_path or "/metrics")

    def instrumented(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO") or "/"
        req = gate.open(environ.get("REQUEST_METHOD", "GET"), path, environ,
                        (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"))
                        if gate.access_log else None, environ.get("SCRIPT_NAME", "") + path)
        if isinstance(req, Unmeasured):
            if req.nested:
                return wsgi_app(environ, start_response)
            return _untimed(gate, environ, start_response,
                            wsgi_app if req.metrics_route is None else metrics_app)
        # The request's own context: the app call, each body step and close() run in it, so
        # the trace is bound there once (never reset: the context is dropped with the
        # response) and the server's context is never touched.
        context = copy_context()
        context.run(req.enter)
        response = _Response(req, start_response, context)
        if "werkzeug.socket" in environ:
            # werkzeug's development server writes its access line from its own context, as
            # the body starts: bound there too (until close) so that line carries the trace.
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

    def log_exception(exc_info: Any) -> None:  # logged once, as the request ends: not twice
        if (req := current_request()) is None:
            return flask_log_exception(exc_info)
        req.failed(exc_info[1])

    def preprocess_request() -> Any:
        """Routing is done: a matched rule labels the request with its template, once per
        request, before any ``before_request`` function runs (reading ``url_rule`` straight
        from Flask's request context costs less than a proxy, a hook or a request subclass)."""
        if ((trace := _current.get()) is not None and (req := trace.request) is not None
                and (ctx := _cv_request.get(None)) is not None
                and (rule := ctx.request.url_rule) is not None):
            req.set_route(rule.rule)
        return flask_preprocess_request()

    flask_log_exception, flask_preprocess_request = app.log_exception, app.preprocess_request
    app.wsgi_app = app.extensions["instrument"] = instrumented  # type: ignore[method-assign]
    app.log_exception = log_exception  # type: ignore[method-assign]
    app.preprocess_request = preprocess_request  # type: ignore[method-assign]
    return app
