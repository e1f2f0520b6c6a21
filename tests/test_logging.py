"""Tests for configure_logging: one JSON object per line, trace IDs, stdlib routing, redaction."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

import instrument
from instrument import trace_span, use_trace_id
from instrument._logging import InterceptHandler
from tests.conftest import LogCapture
from tests.helpers import value

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_stdlib_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers; put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --- the JSON line ---------------------------------------------------------------


def test_each_record_is_one_json_object_with_the_documented_fields(logs: LogCapture) -> None:
    with trace_span("call") as span:
        logger.bind(event="provider_call", provider="openai", latency_ms=12.5).info("called")
    (record,) = [r for r in logs.records if r.get("event") == "provider_call"]
    assert record["level"] == "INFO"
    assert record["message"] == "called"
    assert record["logger"] == __name__
    assert record["trace_id"] == span.trace_id
    assert record["span_id"] == span.span_id
    assert record["provider"] == "openai"
    assert record["latency_ms"] == 12.5
    assert list(record)[:6] == ["timestamp", "level", "message", "logger", "trace_id", "span_id"]


def test_timestamp_is_iso_8601_in_utc(logs: LogCapture) -> None:
    before = datetime.now().astimezone()
    logger.info("tick")
    after = datetime.now().astimezone()
    (record,) = logs.records
    assert record["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)
    assert before <= stamp <= after


def test_outside_a_trace_the_ids_are_null(logs: LogCapture) -> None:
    logger.info("no trace")
    (record,) = logs.records
    assert record["trace_id"] is None
    assert record["span_id"] is None


def test_use_trace_id_reaches_log_lines(logs: LogCapture) -> None:
    with use_trace_id("req-77"):
        logger.warning("inside")
    (record,) = logs.records
    assert record["trace_id"] == "req-77"


def test_level_filters_records_and_an_unknown_level_is_rejected() -> None:
    capture = LogCapture()
    instrument.configure_logging("warning", sink=capture)
    logger.info("dropped")
    logger.warning("kept")
    assert [r["message"] for r in capture.records] == ["kept"]
    with pytest.raises(ValueError):
        instrument.configure_logging("LOUD", sink=capture)


def test_configure_logging_again_replaces_the_previous_sink() -> None:
    first, second = LogCapture(), LogCapture()
    instrument.configure_logging(sink=first)
    instrument.configure_logging(sink=second)
    logger.info("once")
    assert first.records == []
    assert [r["message"] for r in second.records] == ["once"]


def test_an_exception_is_logged_as_a_structured_field_on_one_line(logs: LogCapture) -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("lookup failed")
    (record,) = logs.records
    assert record["exception"]["type"] == "KeyError"
    assert "missing" in record["exception"]["value"]
    assert "raise KeyError" in record["exception"]["traceback"]
    assert logs.text.count("\n") == 1


# --- standard library logging ---------------------------------------------------


def test_stdlib_logging_is_routed_with_the_trace_id(logs: LogCapture) -> None:
    with trace_span("handler") as span:
        logging.getLogger("x").warning("from %s", "stdlib")
        logging.getLogger("uvicorn.error").error("server said")
    records = [r for r in logs.records if r.get("event") != "span"]
    assert [(r["logger"], r["level"], r["message"]) for r in records] == [
        ("x", "WARNING", "from stdlib"), ("uvicorn.error", "ERROR", "server said")]
    assert {r["trace_id"] for r in records} == {span.trace_id}
    assert {r["span_id"] for r in records} == {span.span_id}


def test_stdlib_exceptions_keep_their_traceback(logs: LogCapture) -> None:
    try:
        1 / 0  # noqa: B018 - raising is the point
    except ZeroDivisionError:
        logging.getLogger("app").exception("division")
    (record,) = logs.records
    assert record["logger"] == "app"
    assert record["exception"]["type"] == "ZeroDivisionError"


def test_stdlib_records_name_the_function_that_logged(logs: LogCapture) -> None:
    """The text format shows loguru's caller: the app's function, not logging's internals."""
    seen: list[tuple[str, str]] = []
    sink = logger.add(lambda m: seen.append((m.record["name"], m.record["function"])),
                      level="INFO")
    try:
        logging.getLogger("app").warning("plain")
        try:
            1 / 0  # noqa: B018 - raising is the point
        except ZeroDivisionError:
            logging.getLogger("app").exception("with a traceback")
        logging.LoggerAdapter(logging.getLogger("app"), {}).info("through an adapter")
    finally:
        logger.remove(sink)
    assert seen == [(__name__, "test_stdlib_records_name_the_function_that_logged")] * 3


def test_stdlib_routing_can_be_left_alone() -> None:
    root = logging.getLogger()
    # an earlier configure_logging() in this process may have routed the root logger already
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, InterceptHandler)]
    capture = LogCapture()
    instrument.configure_logging(sink=capture, intercept_stdlib=False)
    logging.getLogger("x").warning("not routed")
    assert capture.records == []


# --- one record, one line ---------------------------------------------------------

FORGED = '\n{"level": "CRITICAL", "message": "forged", "event": "forged", "trace_id": "evil"}'


def test_no_input_can_start_a_new_log_line(logs: LogCapture) -> None:
    nasty = "a\nb\r\nc\u2028d\u2029e\x85f\x0bg\x1ch" + FORGED
    logger.bind(note=nasty, **{"key\nwith newline": nasty}).info("msg" + FORGED)
    logging.getLogger("std").error("std" + FORGED)
    with use_trace_id("x" + FORGED):
        pass
    records = logs.records
    assert len(records) == 3
    assert logs.text.count("\n") == 3
    assert len(logs.text.splitlines()) == 3  # also no \r, \u2028 or \x85 left unescaped
    assert logs.events("forged") == []
    assert records[0]["message"] == "msg" + FORGED
    assert records[0]["note"] == nasty  # escaped on the line, intact after parsing
    assert records[1]["message"] == "std" + FORGED


def test_text_format_keeps_a_record_on_one_line_and_shows_the_trace_id() -> None:
    capture = LogCapture()
    instrument.configure_logging(sink=capture, json=False)
    with use_trace_id("req-text-1"):
        logger.info("first\nsecond")
    lines = capture.text.splitlines()
    assert len(lines) == 1
    assert "req-text-1" in lines[0]
    assert "INFO" in lines[0]
    assert "first\\nsecond" in lines[0]


# --- secrets ---------------------------------------------------------------------------


def test_secret_fields_are_redacted_at_any_depth(logs: LogCapture) -> None:
    logger.bind(
        api_key="sk-live-top",
        headers={"Authorization": "Bearer sk-live-nested", "Accept": "application/json",
                 "api-key": "azure-secret", "X-Api-Key": "x-secret"},
        calls=[{"password": "hunter2", "user": "ann"}],
        session_token="tok-123",
        cookie="session=abc",
    ).info("request")
    (record,) = logs.records
    assert record["api_key"] == "[REDACTED]"
    assert record["headers"] == {"Authorization": "[REDACTED]", "Accept": "application/json",
                                 "api-key": "[REDACTED]", "X-Api-Key": "[REDACTED]"}
    assert record["calls"] == [{"password": "[REDACTED]", "user": "ann"}]
    assert record["session_token"] == "[REDACTED]"
    assert record["cookie"] == "[REDACTED]"
    for secret in ("sk-live", "azure-secret", "x-secret", "hunter2", "tok-123", "abc"):
        assert secret not in logs.text


def test_token_counts_are_not_mistaken_for_secrets(logs: LogCapture) -> None:
    logger.bind(input_tokens=10, output_tokens=5, prompt_tokens=10, completion_tokens=5,
                total_tokens=15, usage={"cached_tokens": 2, "reasoning_tokens": 1},
                max_tokens=100).info("usage")
    (record,) = logs.records
    assert record["prompt_tokens"] == 10
    assert record["completion_tokens"] == 5
    assert record["usage"] == {"cached_tokens": 2, "reasoning_tokens": 1}
    assert record["max_tokens"] == 100


# --- library etiquette ------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.slow
def test_importing_and_using_instrument_adds_no_sink_and_says_nothing() -> None:
    result = run_python("""
        from loguru import logger
        before = set(logger._core.handlers)
        import instrument
        with instrument.trace_span("demo"):
            with instrument.use_trace_id("bad id"):
                pass
        after = set(logger._core.handlers)
        assert before == after, (before, after)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""  # loguru's default handler is there, but instrument is disabled


def test_events_carry_their_fields_to_a_sink_the_application_installs() -> None:
    records: list[dict[str, Any]] = []
    logger.add(lambda message: records.append(message.record["extra"]), level="DEBUG")
    logger.enable("instrument")
    with use_trace_id("not valid!"):
        pass
    (extra,) = [r for r in records if r.get("event") == "invalid_trace_id"]
    assert extra["rejected"] == "not valid!"


# --- failure isolation -------------------------------------------------------------------


class FullDisk:
    def __init__(self) -> None:
        self.attempts = 0

    def write(self, text: str) -> None:
        self.attempts += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass


def test_a_failing_sink_is_counted_reported_once_and_never_raises(
        registry: CollectorRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    sink = FullDisk()
    instrument.configure_logging(sink=sink)
    logger.info("first")
    logger.warning("second")
    logging.getLogger("x").error("third")
    with trace_span("still works") as span:
        pass
    assert span.trace_id
    assert sink.attempts == 3
    assert value(registry, "instrument_internal_errors_total", where="log_sink") == 3
    err = capsys.readouterr().err
    assert "Logging error in Loguru" not in err
    reports = [json.loads(line) for line in err.splitlines()]
    assert len(reports) == 1
    assert reports[0]["event"] == "instrument_internal_error"
    assert reports[0]["where"] == "log_sink"
    assert reports[0]["error_type"] == "OSError"
