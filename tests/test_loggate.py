"""Tests for the opt-in: nothing logged, or even built, before the application asks; levels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

import instrument
from instrument import trace_span, track_cache, track_provider, use_trace_id
from tests.conftest import LogCapture

ROOT = Path(__file__).resolve().parent.parent

# Everything the toolkit logs about: provider calls (priced, unpriced, failing), a cache
# lookup, spans, an invalid trace ID, a label past its limit, an SSE stream, served requests
# (one failing) through the Flask adapter. Loguru's Logger is spied on to list every
# bind, opt and logging call the toolkit makes; the script prints them.
SCRIPT = """
import asyncio, json, sys
from loguru import logger

Logger = type(logger)
started = []
for name in ("bind", "opt", "log", "debug", "info", "warning", "error", "exception"):
    def spy(self, *args, _original=getattr(Logger, name), _name=name, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("instrument"):
            started.append(_name + " from " + caller)
        return _original(self, *args, **kwargs)
    setattr(Logger, name, spy)

import flask
import instrument
from instrument.adapters.flask import instrument_app

instrument.configure(max_label_values=1)
if sys.argv[1] == "enable":
    logger.enable("instrument")

@instrument.track_provider("openai", "gpt-4o")
def call(fail=False):
    if fail:
        raise RuntimeError("boom")
    return "answer"

@instrument.track_provider("acme", "no-price")
def unpriced():
    instrument.record_usage(input_tokens=5, output_tokens=1)  # tokens, but no price known
    return "answer"

@instrument.track_cache("memo")
def lookup(key):
    return None

@instrument.track_sse("/stream")
async def stream():
    yield "event"

async def consume():
    async for _ in stream():
        pass

app = flask.Flask("quiet")
@app.get("/ok")
def ok():
    return "ok"
@app.get("/boom")
def boom():
    raise ValueError("handler failed")
app.logger.disabled = True  # Flask's own traceback is not ours to test
instrument_app(app)
started.clear()  # what the import did once (the toolkit's own logger) is not per call

with instrument.use_trace_id("not a valid id!"):
    call()
    try:
        call(fail=True)
    except RuntimeError:
        pass
    unpriced()
    lookup("a")
    instrument.record_cache("second-cache", True)  # past max_label_values=1: overflow
    with instrument.trace_span("work"):
        pass
asyncio.run(consume())
client = app.test_client()
for path, headers in (("/ok", {"X-Trace-ID": "bad id!"}), ("/boom", {})):
    response = client.get(path, headers=headers)
    response.get_data()
    response.close()
print(json.dumps(started))
"""


def run(mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), mode], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_before_opt_in_nothing_is_emitted_and_no_record_is_even_built() -> None:
    result = run("quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # loguru's default stderr handler is there: nothing reached it
    assert json.loads(result.stdout) == []  # no bind, no opt, no record started by the toolkit


@pytest.mark.slow
def test_logger_enable_is_an_opt_in_too() -> None:
    """The same script, opted in with loguru's own call: every event reaches loguru's default
    handler (and the spy sees them), so the silent run above is silence, not a broken spy."""
    result = run("enable")
    assert result.returncode == 0, result.stderr
    started = json.loads(result.stdout)
    for event in ("provider call openai/gpt-4o ok", "provider call openai/gpt-4o error",
                  "no price or no usage for acme/no-price", "cache memo miss",
                  "rejected an invalid trace ID",
                  "label status of provider_requests_total reached 1 values",
                  "SSE stream /stream ended: completed", "GET /ok 200",
                  "unhandled exception while serving GET /boom"):
        assert event in result.stderr, event
    assert {"log from instrument._loggate", "opt from instrument._loggate"} <= set(started)


# --- levels ---------------------------------------------------------------------------------

@pytest.fixture
def records_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The toolkit modules that called loguru (``bind``, ``opt`` or a logging method)."""
    started: list[str] = []
    for name in ("bind", "opt", "log", "debug", "info", "warning", "error", "exception"):
        original = getattr(type(logger), name)

        def spy(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("instrument"):
                started.append(caller)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(logger), name, spy)
    yield started


def test_below_the_level_a_call_asks_loguru_for_nothing(records_started: list[str]) -> None:
    capture = LogCapture()
    instrument.configure_logging("WARNING", sink=capture)

    @track_provider("openai", "gpt-4o")
    def call() -> str:
        instrument.record_usage(input_tokens=10, output_tokens=2)  # priced: no warning due
        return "ok"

    @track_cache("memo")
    def lookup() -> None:
        return None

    with use_trace_id("0af7651916cd43dd8448eb211c80319c"), trace_span("work"):
        call()
        lookup()
    assert records_started == []
    assert capture.records == []


def test_levels_of_the_events(records_started: list[str]) -> None:
    """Provider calls at INFO (failures at WARNING), cache lookups and spans at DEBUG."""
    capture = LogCapture()
    instrument.configure_logging("INFO", sink=capture)

    @track_provider("openai", "gpt-4o")
    def call(fail: bool = False) -> str:
        instrument.record_usage(input_tokens=10, output_tokens=2)
        if fail:
            raise RuntimeError("no")
        return "ok"

    @track_cache("memo")
    def lookup() -> None:
        return None

    call()
    with pytest.raises(RuntimeError):
        call(fail=True)
    lookup()
    assert [(r["event"], r["level"]) for r in capture.records] == [
        ("provider_call", "INFO"), ("provider_call", "WARNING")]
    instrument.configure_logging("DEBUG", sink=capture)
    lookup()
    assert (capture.records[-1]["event"], capture.records[-1]["level"]) == ("cache", "DEBUG")


def test_logger_disable_after_configure_logging_silences_the_toolkit_only() -> None:
    capture = LogCapture()
    instrument.configure_logging("DEBUG", sink=capture)
    logger.disable("instrument")
    with use_trace_id("bad id!"):
        logger.info("the application's own line")
    assert [r["message"] for r in capture.records] == ["the application's own line"]
