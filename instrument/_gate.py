"""The request gate: what a served request is, decided once, for every server adapter.

An adapter translates its framework's hooks and nothing else. For each request it
hands the gate the method, the path (as routed, without a mount point), the header
source and the client's address, and ``open`` answers with either:

- a ``ServerRequest`` (measured): the adapter binds its trace (``enter``), tells it
  the route, the response's start (sending ``merge_headers`` of its
  ``response_headers``), each body chunk and the end; or
- an ``Unmeasured``: ``NESTED`` (an outer instrumented app observes this request:
  pass it on untouched), ``EXCLUDED`` (``exclude_paths``) or a metrics route. Those
  two are served in the trace ``untimed()`` returns, its headers on the response,
  and no trace or request is counted (``serve_untimed_asgi`` / ``_wsgi`` do it all).

``exclude_paths`` has one rule for every framework: an exact path, or a prefix when
the entry ends in ``*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from prometheus_client import CollectorRegistry

from instrument import _metrics
from instrument._context import TraceContext, trace_context
from instrument._http import Client, Extract, ServerRequest
from instrument._propagation import extract_checked, headers_for, incoming_trace

__all__ = ["EXCLUDED", "NESTED", "Gate", "Unmeasured", "merge_headers"]

H = TypeVar("H", str, bytes)


class Unmeasured(NamedTuple):
    """Why a request is served unmeasured. ``metrics_route``: "", "/health" or "/summary"."""

    nested: bool
    metrics_route: str | None = None


NESTED = Unmeasured(True)
EXCLUDED = Unmeasured(False)
_METRICS_ROUTES = {sub: Unmeasured(False, sub) for sub in ("", "/health", "/summary")}


class Gate:
    """One adapter's rules, checked at configuration time: its metrics routes, its exclusions,
    whether it writes the access log, the metrics it records into and how it reads headers."""

    __slots__ = ("_prefixes", "_skipped", "access_log", "extract", "metrics", "metrics_path",
                 "registry")

    def __init__(self, *, metrics_path: str | None = "/metrics", access_log: bool = True,
                 exclude_paths: Iterable[str] = (), registry: CollectorRegistry | None = None,
                 extract: Extract = extract_checked) -> None:
        if metrics_path is not None and (not isinstance(metrics_path, str)
                                         or not metrics_path.startswith("/")):
            raise ValueError(f"metrics_path must be a path starting with '/', or None to serve "
                             f"no metrics routes; got {metrics_path!r}")
        if isinstance(exclude_paths, (str, bytes)):
            raise TypeError(f"exclude_paths must be a list of paths, not one string: write "
                            f"exclude_paths=[{exclude_paths!r}]")
        try:
            excluded = tuple(exclude_paths)
        except TypeError:
            raise TypeError(f"exclude_paths must be a list of paths, got "
                            f"{type(exclude_paths).__name__}") from None
        if registry is not None and not isinstance(registry, CollectorRegistry):
            raise ValueError(f"registry must be a prometheus_client CollectorRegistry, got "
                             f"{type(registry).__name__}")
        for entry in excluded:
            if not isinstance(entry, str) or not entry.startswith("/"):
                raise ValueError(f"exclude_paths entries are paths starting with '/' (a prefix "
                                 f"when they end in '*'); got {entry!r}")
        self.metrics_path = metrics_path
        self.registry = registry
        self.access_log = bool(access_log)
        self.metrics = None if registry is None else _metrics.metrics_for(registry)
        self.extract = extract
        # path -> why it is not measured: the metrics routes and the exact exclusions
        skipped: dict[str, Unmeasured] = {p: EXCLUDED for p in excluded if not p.endswith("*")}
        if metrics_path is not None:
            base = metrics_path.rstrip("/")
            for path, sub in ((base, ""), (base + "/", ""), (base + "/health", "/health"),
                              (base + "/summary", "/summary")):
                skipped[path] = _METRICS_ROUTES[sub]
        self._skipped = skipped
        self._prefixes = tuple(p[:-1] for p in excluded if p.endswith("*"))

    def open(self, method: str, path: str, headers: Any, client: Client = None,
             full_path: str | None = None) -> ServerRequest | Unmeasured:
        """What this request is. ``path`` is matched against the rules; ``full_path`` (the
        mount point included, if any) is what the access line shows."""
        if (ctx := trace_context.get()) is not None and ctx.request is not None:
            return NESTED
        skipped = self._skipped.get(path)
        if skipped is not None:
            return skipped
        if self._prefixes and path.startswith(self._prefixes):
            return EXCLUDED
        return ServerRequest(method, full_path or path, headers, client, self.access_log,
                             self.metrics, self.extract)

    def untimed(self, headers: Any) -> tuple[TraceContext, list[tuple[str, str]]]:
        """The trace an unmeasured request runs in (its own, else a new one; none counted)
        and the headers that carry it back."""
        try:
            trace_id, parent, _valid = self.extract(headers)
        except Exception as exc:  # headers not as the server's spec says: a fresh trace
            _metrics.report_internal_error("trace_extract", exc)
            trace_id = parent = None
        trace = incoming_trace(trace_id, parent)
        return trace, headers_for(trace)

    async def serve_untimed_asgi(self, scope: Any, receive: Any, send: Any, app: Any) -> None:
        """Serve an ASGI request unmeasured, in ``untimed``'s trace, its headers sent back."""
        trace, pairs = self.untimed(scope.get("headers", ()))
        headers = raw_headers(pairs)

        async def send_traced(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"], _sse = merge_headers(message.get("headers", ()), headers)
            await send(message)

        token = trace_context.set(trace)
        try:
            await app(scope, receive, send_traced)
        finally:
            trace_context.reset(token)

    def serve_untimed_wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any],
                           app: Callable[..., Iterable[bytes]]) -> Iterable[bytes]:
        """Serve a WSGI request unmeasured, in ``untimed``'s trace, its headers sent back (the
        body is read after this returns: without the trace)."""
        trace, pairs = self.untimed(environ)
        token = trace_context.set(trace)
        try:
            return app(environ, lambda status, headers, exc_info=None:
                       start_response(status, merge_headers(headers, pairs)[0], exc_info))
        finally:
            trace_context.reset(token)


# header name -> 1 (Content-Type) or 2 (ours): ASGI's lower-case bytes and the usual spellings;
# any other spelling of the same length is lower-cased and looked up again
_NAMES: dict[Any, int] = {b"content-type": 1, "Content-Type": 1, "content-type": 1,
                          b"x-trace-id": 2, "x-trace-id": 2, "X-Trace-ID": 2, b"traceparent": 2,
                          "traceparent": 2}


def merge_headers(headers: Iterable[tuple[H, H]], trace: list[tuple[H, H]]
                  ) -> tuple[list[tuple[H, H]], bool]:
    """A response's headers with the request's trace headers (the app's own copies dropped:
    never two values), and whether its body is an event stream. For ``str`` pairs (WSGI,
    aiohttp) and ASGI's ``bytes`` alike; names compare case-insensitively."""
    sse = clash = False
    for name, value in headers:
        kind = _NAMES.get(name)
        if kind is None and (not 10 <= len(name) <= 12
                             or (kind := _NAMES.get(name.lower())) is None):
            continue
        if kind == 1:
            sse = value.startswith(b"text/event-stream" if type(value) is bytes  # type: ignore[arg-type]
                                   else "text/event-stream")
        else:
            clash = True
    if clash:
        kept = [pair for pair in headers if _NAMES.get(pair[0].lower()) != 2]
        return kept + trace, sse
    return [*headers, *trace], sse  # type: ignore[list-item]  # (mypy: a constrained TypeVar)


def raw_headers(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as ASGI sends them: lower-case names, latin-1 bytes."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
