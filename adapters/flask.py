"""Flask adapter: the core's WSGI middleware around ``app.wsgi_app``, told Flask's route.

The template is read from Flask's request context as routing ends (``preprocess_request``,
before any ``before_request`` function); a request's exceptions reach its observer through
``log_exception``, so each is logged once, as the request ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from flask import Flask
    from flask.globals import _cv_request  # the request context variable (Flask >= 2.2)
except ImportError as exc:
    raise ImportError("instrument.adapters.flask needs Flask: "
                      "pip install 'llm-instrument[flask]'") from exc

from prometheus_client import CollectorRegistry

from instrument._context import current_request
from instrument._gate import Gate
from instrument._metrics import gunicorn_child_exit  # the documented import path for gunicorn
from instrument._propagation import extract_wsgi
from instrument._wsgi import WSGIMiddleware

__all__ = ["gunicorn_child_exit", "instrument_app"]


def _rule() -> str | None:
    """The matched rule's template from Flask's request context (None: a 404/405)."""
    rule = ctx.request.url_rule if (ctx := _cv_request.get(None)) is not None else None
    return rule.rule if rule is not None else None


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
    instrumented = WSGIMiddleware(app.wsgi_app, gate, _rule)

    def log_exception(exc_info: Any) -> None:  # logged once, as the request ends: not twice
        if (req := current_request()) is None:
            return flask_log_exception(exc_info)
        req.failed(exc_info[1])

    def preprocess_request() -> Any:
        """Routing is done: a matched rule labels the request with its template, once per
        request, before any ``before_request`` function runs (reading ``url_rule`` straight
        from Flask's request context costs less than a proxy, a hook or a request subclass)."""
        if (req := current_request()) is not None and (rule := _rule()) is not None:
            req.set_route(rule)
        return flask_preprocess_request()

    flask_log_exception, flask_preprocess_request = app.log_exception, app.preprocess_request
    app.wsgi_app = app.extensions["instrument"] = instrumented  # type: ignore[method-assign]
    app.log_exception = log_exception  # type: ignore[method-assign]
    app.preprocess_request = preprocess_request  # type: ignore[method-assign]
    return app
