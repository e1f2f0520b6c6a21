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
    from starlette.types import ASGIApp, Scope
except ImportError as exc:  # pragma: no cover - tested with sys.modules patched
    raise ImportError("instrument.adapters.starlette needs Starlette: "
                      "pip install 'llm-instrument[fastapi]'") from exc

from prometheus_client import CollectorRegistry

from instrument._asgi import ASGIMiddleware
from instrument._gate import Gate
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


class InstrumentMiddleware(ASGIMiddleware):
    """Pure ASGI middleware around a Starlette/FastAPI stack (or any ASGI app): trace ID in and
    out, request metrics, access log, metrics routes; the route template as Starlette
    matched it, and Starlette's ``ClientDisconnect`` as the client leaving."""

    disconnect_errors = (ClientDisconnect,)
    route_of = staticmethod(_template)


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
