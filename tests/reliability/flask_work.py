"""The Flask app of the load tests, served by werkzeug in the test process or by gunicorn
(which imports ``app`` from here: the upstream URL and the log file come from the
environment)."""

from __future__ import annotations

import os

import httpx
from flask import Flask
from loguru import logger

import instrument
from instrument import get_trace_id, trace_span
from instrument.adapters.flask import instrument_app
from instrument.adapters.httpx import instrument_client
from tests.reliability.common import MARKER, upstream_body, upstream_path


def create_app(upstream: str, http: httpx.Client) -> Flask:
    app = Flask(__name__)

    @app.get("/work/<tag>")
    def work(tag: str) -> str:
        i = int(MARKER.fullmatch(tag).group(1))  # type: ignore[union-attr]
        with trace_span("upstream"):
            logger.info("handling {}", tag)
            http.post(upstream_path(upstream, i), json=upstream_body(i)).raise_for_status()
        return get_trace_id() or ""

    return instrument_app(app)


if "RELIABILITY_UPSTREAM" in os.environ:  # under gunicorn
    instrument.configure_logging("INFO", sink=open(os.environ["RELIABILITY_LOG"], "a",  # noqa: SIM115
                                                   buffering=1))
    app = create_app(os.environ["RELIABILITY_UPSTREAM"], instrument_client(httpx.Client(
        timeout=30, limits=httpx.Limits(max_connections=100))))
