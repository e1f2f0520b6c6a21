"""The standard Flask app of the shared server suite, served by werkzeug's threaded server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.serving import make_server

from instrument import get_trace_id
from instrument.adapters.flask import instrument_app
from tests.helpers import free_port

ITEM_ROUTE = "/items/<item_id>"
BACKGROUND_TRACE_IDS: list[str | None] = []


def create_app() -> Flask:
    """The routes every server adapter's test app provides (Flask's default error handling)."""
    app = Flask(__name__)

    @app.get(ITEM_ROUTE)
    def item(item_id: str) -> Any:
        return jsonify(item_id=item_id, trace_id=get_trace_id())

    @app.post("/only-post")
    def only_post() -> str:
        return "posted"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/slow-body")
    def slow_body() -> Response:
        def chunks() -> Iterator[str]:
            for i in range(3):  # headers go out with chunk 0; the body ends 0.6 s later
                yield f"chunk {i}\n"
                time.sleep(0.2)

        return Response(chunks(), mimetype="text/plain")

    @app.get("/sse")
    def sse() -> Response:
        def events() -> Iterator[str]:
            for i in range(5):
                yield f"data: {i}\n\n"
                time.sleep(0.02)

        return Response(events(), mimetype="text/event-stream")

    @app.get("/sse-long")
    def sse_long() -> Response:
        def events() -> Iterator[str]:
            for i in range(200):
                yield f"data: {i}\n\n"
                time.sleep(0.05)

        return Response(events(), mimetype="text/event-stream")

    @app.get("/background")
    def background() -> Response:
        def later() -> None:
            time.sleep(0.5)
            BACKGROUND_TRACE_IDS.append(get_trace_id())

        response = Response("ok")
        response.call_on_close(later)
        return response

    @app.get("/trace")
    def trace() -> str:
        return get_trace_id() or ""

    return app


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve a WSGI app on werkzeug's threaded server on 127.0.0.1; yield its base URL."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="flask-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve(**instrument_kwargs: Any) -> Iterator[str]:
    """The standard app, instrumented with ``instrument_kwargs``, served; yields the base URL."""
    app = create_app()
    instrument_app(app, **instrument_kwargs)
    with serving(app) as url:
        yield url
