"""The WSGI streams of the exit-path tests: Flask, served by werkzeug in the test process or
by gunicorn (which imports ``app`` from here; its log file and release file come from the
environment).

``/chat/<plan>`` is a ``@track_sse`` generator relaying a ``@track_provider`` streaming call;
``/plain/<plan>`` is the same body without ``@track_sse`` (an undecorated generator), which
the request measures as a stream of its own. A plan is read from its name: how many tokens,
whether the upstream holds before a token (until ``release``), trickles or breaks.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response

import instrument
from instrument import get_trace_id, track_provider, track_sse
from instrument.adapters.flask import instrument_app

MODEL = "stream-model"
BOUND = 30.0
#: ``t5``: 5 tokens; ``h0``: hold before token 0; ``s3``: trickle from token 3; ``f3``: break
#: at token 3 (``-<n>`` after it tells streams of one plan apart)
_PART = re.compile(r"([thsf])(\d+)")


class UpstreamBroke(Exception):
    """The fake upstream failing mid-stream."""


def parse(plan: str) -> dict[str, int]:
    return {key: int(n) for key, n in _PART.findall(plan.split("-")[0])}


def _hold(released: Callable[[], bool]) -> None:
    end = time.monotonic() + BOUND
    while not released() and time.monotonic() < end:
        time.sleep(0.01)


@track_provider("fake-llm", model=MODEL)
def upstream(plan: dict[str, int], released: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    for k in range(plan.get("t", 5)):
        if k == plan.get("h"):
            _hold(released)
        if k == plan.get("f"):
            raise UpstreamBroke(f"the upstream broke at token {k}")
        if "s" in plan and k >= plan["s"]:
            time.sleep(0.01)
        yield {"choices": [{"delta": {"content": f"t{k}"}}]}
    yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": plan.get("t", 5)}}


def relay(plan: dict[str, int], released: Callable[[], bool]) -> Iterator[str]:
    for chunk in upstream(plan, released):
        if chunk["choices"]:
            yield f"data: {get_trace_id()} {chunk['choices'][0]['delta']['content']}\n\n"
    yield f"data: {get_trace_id()} [DONE]\n\n"


chat = track_sse("/chat")(relay)


def create_app(released: Callable[[str], bool]) -> Flask:
    """``released(plan)``: whether a held upstream of that plan may go on."""
    app = Flask(__name__)

    @app.get("/chat/<plan>")
    def tracked(plan: str) -> Response:
        return Response(chat(parse(plan), lambda: released(plan)),
                        mimetype="text/event-stream")

    @app.get("/plain/<plan>")
    def plain(plan: str) -> Response:
        return Response(relay(parse(plan), lambda: released(plan)),
                        mimetype="text/event-stream")

    return instrument_app(app, access_log=False)


def released_by(events: dict[str, threading.Event]) -> Callable[[str], bool]:
    return lambda plan: events.setdefault(plan, threading.Event()).is_set()


if "RELIABILITY_RELEASE" in os.environ:  # under gunicorn
    _release = Path(os.environ["RELIABILITY_RELEASE"])
    instrument.configure_logging("INFO", sink=open(  # noqa: SIM115
        Path(os.environ["RELIABILITY_LOG_DIR"]) / f"worker-{os.getpid()}.log", "a",
        buffering=1))
    app = create_app(lambda plan: (_release / plan).exists())
