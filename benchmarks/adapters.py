"""Per-request cost of the server adapters next to the popular alternatives, in one run.

FastAPI apps are driven in-process through the ASGI callable, Flask apps
through the WSGI callable, so the figures are the middleware's own cost (no
sockets, no server). For each framework: a bare app, ours with access logs
off, ours with access logs on (into a null sink), the alternative
(prometheus-fastapi-instrumentator / prometheus-flask-exporter), the floor (a
minimal middleware doing only the core of the job, ``benchmarks/floor.py``) and
ours once more for requests without an ``X-Trace-ID`` (the other requests carry
one that is not W3C-shaped, so no ``traceparent`` is built for them). Rounds
alternate between the apps; medians are reported, and the ratio of what we
add to what the alternative adds.
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

import instrument
from benchmarks import floor

_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - kept open for the whole run


def _logging_for(name: str) -> None:
    """Each row's logging: as a fresh process has it (loguru's default stderr handler, the
    toolkit not opted in), or opted in with configure_logging("INFO") into a sink that drops
    each line (``_access_log``) or into /dev/null, a real write per line (``_devnull``)."""
    logger.remove()
    if name == "floor_access_log":  # loguru's own floor: '{message}' to a sink that drops it
        logger.configure(patcher=None)
        logger.add(lambda message: None, format="{message}", level="INFO")
    elif name.endswith("_access_log"):
        instrument.configure_logging("INFO", sink=lambda line: None, intercept_stdlib=False)
    elif name.endswith("_devnull"):
        instrument.configure_logging("INFO", sink=_DEVNULL, intercept_stdlib=False)
    else:
        logger.configure(patcher=None)
        logger.add(sys.stderr, level="DEBUG")  # loguru's own default
        logger.disable("instrument")


# -- FastAPI ------------------------------------------------------------------------------

def _fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


def _asgi_runner(app: Any, trace_header: bool = True) -> Callable[[int], Any]:
    headers = [(b"host", b"bench")] + ([(b"x-trace-id", b"bench-trace-1")] if trace_header else [])
    scope_base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                  "method": "GET", "scheme": "http", "root_path": "", "query_string": b"",
                  "headers": headers,
                  "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        pass

    async def run(n: int) -> None:
        for i in range(n):
            scope = dict(scope_base, path=f"/items/{i % 50}", raw_path=f"/items/{i % 50}".encode())
            await app(scope, receive, send)

    return run


def bench_fastapi(n: int, rounds: int) -> dict[str, float]:
    from prometheus_fastapi_instrumentator import Instrumentator

    from instrument.adapters.starlette import instrument_app

    instrument.configure(registry=CollectorRegistry())
    runners = _runners(_fastapi_app, instrument_app, _asgi_runner, "instrumentator",
                       lambda app: Instrumentator(registry=CollectorRegistry()).instrument(app),
                       lambda app, counts: floor.starlette(app, counts))
    return _measure(runners, n, rounds, asyncio_=True, alternative="instrumentator")


# -- Flask --------------------------------------------------------------------------------

def _flask_app() -> Any:
    from flask import Flask

    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


def _wsgi_runner(app: Any, trace_header: bool = True) -> Callable[[int], Any]:
    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return None

    trace = {"HTTP_X_TRACE_ID": "bench-trace-1"} if trace_header else {}

    def run(n: int) -> None:
        for i in range(n):
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/items/{i % 50}",
                       "QUERY_STRING": "", "SERVER_NAME": "bench", "SERVER_PORT": "80",
                       "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                       "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(),
                       "wsgi.multithread": False, "wsgi.multiprocess": False,
                       "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1",
                       "REMOTE_PORT": "5000", **trace}
            body = app(environ, start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return run


def bench_flask(n: int, rounds: int) -> dict[str, float]:
    from prometheus_flask_exporter import PrometheusMetrics

    from instrument.adapters.flask import instrument_app

    instrument.configure(registry=CollectorRegistry())
    runners = _runners(_flask_app, instrument_app, _wsgi_runner, "exporter",
                       lambda app: PrometheusMetrics(app, registry=CollectorRegistry()),
                       lambda app, counts: floor.flask(app, counts))
    return _measure(runners, n, rounds, asyncio_=False, alternative="exporter")


# -- shared -------------------------------------------------------------------------------

def _runners(make: Callable[[], Any], instrument_app: Callable[..., Any],
             runner: Callable[..., Callable[[int], Any]], alternative: str,
             add_alternative: Callable[[Any], Any],
             add_floor: Callable[[Any, floor.Counts], Any]
             ) -> dict[str, Callable[[int], Any]]:
    """The same app, bare, with ours (access log off; on by default but not opted in; opted
    in), the alternative and the floor; ours once more for requests without an X-Trace-ID."""
    ours = instrument_app(make(), access_log=False)
    theirs = make()
    add_alternative(theirs)
    logged = instrument_app(make())  # access_log=True: the default
    apps = {"bare": make(), "ours": ours, "ours_default": logged, alternative: theirs,
            "floor": add_floor(make(), floor.Counts()),
            "floor_access_log": add_floor(make(), floor.LoggedCounts())}
    runners = {name: runner(app) for name, app in apps.items()}
    runners["ours_access_log"] = runner(logged)
    runners["ours_access_log_devnull"] = runner(logged)
    runners["ours_no_trace_header"] = runner(ours, trace_header=False)
    return runners


def _measure(runners: dict[str, Callable[[int], Any]], n: int, rounds: int, *, asyncio_: bool,
             alternative: str) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in runners}

    def timed(name: str, run: Callable[[int], Any]) -> float:
        _logging_for(name)
        start = time.perf_counter()
        if asyncio_:
            asyncio.run(run(n))
        else:
            run(n)
        return (time.perf_counter() - start) / n * 1e6

    for name, run in runners.items():  # warm-up: first requests build caches
        timed(name, run)
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(timed(name, run))
    _logging_for("bare")
    med = {k: statistics.median(v) for k, v in samples.items()}
    bare = med["bare"]
    out = {"bare_us": bare}
    for name in runners:
        if name != "bare":
            out[f"{name}_added_us"] = med[name] - bare
    out["ratio"] = out["ours_added_us"] / out[f"{alternative}_added_us"]
    out["access_log_ratio"] = out["ours_access_log_added_us"] / out[f"{alternative}_added_us"]
    out["access_log_devnull_ratio"] = (out["ours_access_log_devnull_added_us"]
                                       / out[f"{alternative}_added_us"])
    out["floor_ratio"] = out["floor_added_us"] / out[f"{alternative}_added_us"]
    # what we add over what the floor adds: the request gate's target is <= 1.5x
    out["over_floor"] = out["ours_added_us"] / out["floor_added_us"]
    out["no_trace_header_over_floor"] = out["ours_no_trace_header_added_us"] / out["floor_added_us"]
    out["floor_access_log_ratio"] = (out["floor_access_log_added_us"]
                                     / out[f"{alternative}_added_us"])
    return out


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    n, rounds = (50, 1) if quick else (1500, 7)
    return {"fastapi": bench_fastapi(n, rounds), "flask": bench_flask(n, rounds)}


def report(results: dict[str, dict[str, float]]) -> str:
    lines = ["adapters (in-process, per request, median of rounds)"]
    for framework, alternative, label in (("fastapi", "instrumentator",
                                           "prometheus-fastapi-instrumentator"),
                                          ("flask", "exporter", "prometheus-flask-exporter")):
        f = results[framework]
        lines += [
            f"  {framework}: bare {f['bare_us']:.1f} us; added: {label} "
            f"{f[f'{alternative}_added_us']:.1f} us, floor {f['floor_added_us']:.1f} us "
            f"({f['floor_ratio']:.2f}x)",
            f"    ours, access log off {f['ours_added_us']:.1f} us: {f['over_floor']:.2f}x the "
            f"floor (target <= 1.5x), {f['ratio']:.2f}x the alternative; on but not opted in "
            f"(the default) {f['ours_default_added_us']:.1f} us",
            f"    ours, access log opted in: {f['ours_access_log_added_us']:.1f} us "
            f"({f['access_log_ratio']:.2f}x; target <= 1.0x), written to /dev/null "
            f"{f['ours_access_log_devnull_added_us']:.1f} us "
            f"({f['access_log_devnull_ratio']:.2f}x); the floor with one bare loguru line "
            f"{f['floor_access_log_added_us']:.1f} us ({f['floor_access_log_ratio']:.2f}x)",
        ]
    f, k = results["fastapi"], results["flask"]
    lines += [
        f"  without an incoming X-Trace-ID (a new W3C trace ID, traceparent sent back): "
        f"ours adds {f['ours_no_trace_header_added_us']:.1f} us "
        f"({f['no_trace_header_over_floor']:.2f}x the floor, FastAPI), "
        f"{k['ours_no_trace_header_added_us']:.1f} us "
        f"({k['no_trace_header_over_floor']:.2f}x, Flask)",
        "  floor: a minimal middleware doing only the core of the job (benchmarks/floor.py)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
