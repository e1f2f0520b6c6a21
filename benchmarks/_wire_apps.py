"""The apps ``benchmarks/wire.py`` serves, one variant per server process (``BENCH_WIRE``).

Variants: ``bare``; ``floor`` (``benchmarks/floor.py``: the least any design can do);
``ours`` (``instrument_app(app, access_log=False)``); ``ours_access_log``
(the access log on and opted in with ``configure_logging("INFO")``: one JSON line per
request to stderr, which the benchmark sends to /dev/null, a real write); ``alternative``
(prometheus-fastapi-instrumentator / prometheus-flask-exporter). Logging otherwise as a
fresh process has it: the toolkit not opted in.

    uvicorn --factory benchmarks._wire_apps:fastapi_app
    gunicorn 'benchmarks._wire_apps:flask_app()'
"""

from __future__ import annotations

import os
from typing import Any

VARIANTS = ("bare", "floor", "ours", "ours_access_log", "alternative")


def _variant() -> str:
    variant = os.environ.get("BENCH_WIRE", "bare")
    if variant not in VARIANTS:
        raise SystemExit(f"BENCH_WIRE={variant!r}: not one of {VARIANTS}")
    if variant == "ours_access_log":
        import instrument

        instrument.configure_logging("INFO", intercept_stdlib=False)
    return variant


def fastapi_app() -> Any:
    from benchmarks.adapters import _fastapi_app

    variant, app = _variant(), _fastapi_app()
    if variant == "alternative":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app)
    elif variant == "floor":
        from benchmarks import floor

        floor.starlette(app, floor.Counts())
    elif variant != "bare":
        from instrument.adapters.starlette import instrument_app

        instrument_app(app, access_log=variant == "ours_access_log")
    return app


def flask_app() -> Any:
    from benchmarks.adapters import _flask_app

    variant, app = _variant(), _flask_app()
    if variant == "alternative":
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app)
    elif variant == "floor":
        from benchmarks import floor

        floor.flask(app, floor.Counts())
    elif variant != "bare":
        from instrument.adapters.flask import instrument_app

        instrument_app(app, access_log=variant == "ours_access_log")
    return app
