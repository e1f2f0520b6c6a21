"""The least a request-metrics middleware can do: a floor to read the adapters' costs against.

Each middleware here does only what any tool meeting the adapters' contract must
do per request, written as directly as Python allows: read and validate the
``X-Trace-ID`` header, make it current in a context variable, send it back,
count the request in progress once routed, and at the end of the body (not at
the headers) count it per route template and status and observe its duration
in a histogram. Nothing else: no ``traceparent``, no exemplars, no access log,
no error counts, no SSE handling, no 499s, no label bounds, no exposition.

What one of these adds to a bare app, measured in the same run as ours, is the
floor under any design's cost inside that framework. With ``LoggedCounts`` a
request also writes one bare loguru line (``{message}``, to a sink that drops
it): the floor under any access log kept with loguru.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from loguru import logger

from instrument._catalog import HTTP_BUCKETS

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)


class _Request:
    __slots__ = ("route", "status")

    def __init__(self) -> None:
        self.route: str | None = None
        self.status = 500


# the trace ID and the request: one context variable, as in ours
trace_context: ContextVar[tuple[str, _Request] | None] = ContextVar("floor_current", default=None)


class Counts:
    """Requests per (method, route, status), one histogram per (method, route), in progress."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.histograms: dict[tuple[str, str], list[float]] = {}  # buckets..., +Inf, sum
        self.active: set[object] = set()

    def done(self, request: object, method: str, route: str, status: int,
             elapsed: float) -> None:
        self.active.discard(request)
        with self.lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            histogram = self.histograms.get((method, route))
            if histogram is None:
                histogram = self.histograms[(method, route)] = [0.0] * (len(HTTP_BUCKETS) + 2)
            histogram[bisect_left(HTTP_BUCKETS, elapsed)] += 1
            histogram[-1] += elapsed


class LoggedCounts(Counts):
    """``Counts`` plus the least an access log can cost: one bare loguru line per request."""

    def done(self, request: object, method: str, route: str, status: int,
             elapsed: float) -> None:
        Counts.done(self, request, method, route, status, elapsed)
        logger.info(f"{method} {route} {status}")


def _trace_id(value: str | None) -> str:
    return value if value is not None and _VALID.fullmatch(value) else "%032x" % 1  # noqa: UP031


# -- ASGI ---------------------------------------------------------------------------------

def starlette(starlette_app: Any, counts: Counts) -> Any:
    """Around a Starlette/FastAPI app's whole stack, as ours sits (its error 500s included)."""
    build = starlette_app.build_middleware_stack
    starlette_app.build_middleware_stack = lambda: asgi(build(), counts)
    return starlette_app


def asgi(app: Any, counts: Counts) -> Callable[..., Any]:
    """Around an ASGI app (the route template from the scope, once routed)."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start, method = perf_counter(), scope["method"]
        raw = None
        for name, value in scope["headers"]:
            if name == b"x-trace-id":
                raw = value.decode("latin-1")
        trace_id = _trace_id(raw)
        request = _Request()

        async def send_observed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()),
                                      (b"x-trace-id", trace_id.encode("latin-1"))]
                request.status = message["status"]
                route = scope.get("route")
                request.route = route.path_format if route is not None else "__unmatched__"
                counts.active.add(request)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                counts.done(request, method, request.route or "__unmatched__", request.status,
                            perf_counter() - start)

        token = trace_context.set((trace_id, request))
        try:
            await app(scope, receive, send_observed)
        finally:
            counts.active.discard(request)  # the app failed or sent no complete body
            trace_context.reset(token)

    return middleware


# -- WSGI (Flask) -------------------------------------------------------------------------

class _Body:
    """The response body, timed to its end; the trace stays current until ``close()``."""

    __slots__ = ("_counts", "_inner", "_method", "_request", "_start", "_token")

    def __init__(self, inner: Iterable[bytes], counts: Counts, request: _Request,
                 method: str, start: float, token: Any) -> None:
        self._inner, self._counts, self._request = inner, counts, request
        self._method, self._start, self._token = method, start, token

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner
        request = self._request
        self._counts.done(request, self._method, request.route or "__unmatched__",
                          request.status, perf_counter() - self._start)

    def close(self) -> None:
        self._counts.active.discard(self._request)  # a hang-up: no longer in progress
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()
        token, self._token = self._token, None
        if token is not None:  # once
            try:
                trace_context.reset(token)
            except ValueError:  # closed from another context: nothing of ours is bound there
                pass


def flask(flask_app: Any, counts: Counts) -> Any:
    """Around ``app.wsgi_app``, the route template from ``request.url_rule`` once routed."""
    from flask.globals import _cv_request

    wsgi_app, preprocess = flask_app.wsgi_app, flask_app.preprocess_request

    def preprocess_request() -> Any:
        ours, ctx = trace_context.get(), _cv_request.get(None)
        if ours is not None and ctx is not None and (rule := ctx.request.url_rule) is not None:
            ours[1].route = rule.rule
            counts.active.add(ours[1])
        return preprocess()

    def middleware(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start, method = perf_counter(), environ["REQUEST_METHOD"]
        trace_id = _trace_id(environ.get("HTTP_X_TRACE_ID"))
        request = _Request()
        token = trace_context.set((trace_id, request))  # undone by the server's close()

        def start_traced(status: str, headers: list[tuple[str, str]],
                         exc_info: Any = None) -> Any:
            request.status = int(status[:3])
            return start_response(status, [*headers, ("X-Trace-ID", trace_id)], exc_info)

        return _Body(wsgi_app(environ, start_traced), counts, request, method, start, token)

    flask_app.wsgi_app = middleware
    flask_app.preprocess_request = preprocess_request
    return flask_app
