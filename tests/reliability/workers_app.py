"""The Flask app of the several-workers test, imported by each gunicorn worker.

``/hit/<i>`` makes one ``@track_provider`` call and answers with the worker's pid; ``/hold``
is an SSE stream whose first event names the worker, then holds inside a provider call
(until ``RELIABILITY_RELEASE`` exists, bounded): a request, a stream and a provider call in
flight, for the test to kill the worker under. Each worker logs to a file of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Flask, Response

import instrument
from instrument import track_provider, track_sse
from instrument.adapters.flask import instrument_app

BOUND = 30.0


@track_provider("fake-llm", model="workers-model")
def answer(i: int) -> dict[str, object]:
    return {"usage": {"prompt_tokens": 2, "completion_tokens": 1}, "i": i}


@track_provider("fake-llm", model="workers-model")
def held(release: Path) -> dict[str, object]:
    end = time.monotonic() + BOUND
    while not release.exists() and time.monotonic() < end:
        time.sleep(0.01)
    return {"usage": {"prompt_tokens": 2, "completion_tokens": 1}}


@track_sse("/hold")
def holding(release: Path) -> Iterator[str]:
    yield f"data: {os.getpid()}\n\n"
    held(release)
    yield "data: released\n\n"


def create_app(release: Path) -> Flask:
    app = Flask(__name__)

    @app.get("/hit/<int:i>")
    def hit(i: int) -> str:
        answer(i)
        return str(os.getpid())

    @app.get("/hold")
    def hold() -> Response:
        return Response(holding(release), mimetype="text/event-stream")

    return instrument_app(app, access_log=False)


if "RELIABILITY_LOG_DIR" in os.environ:  # under gunicorn: each worker imports this module
    instrument.configure_logging("INFO", sink=open(  # noqa: SIM115
        Path(os.environ["RELIABILITY_LOG_DIR"]) / f"worker-{os.getpid()}.log", "a", buffering=1))
    # configured, then configured again (a settings module, then the app's own tuning): the
    # notice that exemplars are off in this mode must still be said once per worker
    instrument.configure()
    instrument.configure(max_label_values=100)
    app = create_app(Path(os.environ["RELIABILITY_RELEASE"]))
