"""Tests for the log sink's failure isolation: a raising sink, a blocking sink behind the
bounded queue, drops counted, lines drained when the sink is replaced."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

import instrument
from tests.helpers import value, wait_until

SECRET = "PLANTED-raw-field"


def test_a_raising_callable_sink_is_counted_and_prints_no_record(
        registry: CollectorRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []

    def sink(line: str) -> None:
        calls.append(line)
        raise RuntimeError("sink is down")

    instrument.configure_logging(sink=sink)
    logger.bind(api_key=SECRET, headers={"Authorization": f"Bearer {SECRET}"}).info("one")
    logger.warning("two")
    assert len(calls) == 2
    assert value(registry, "instrument_internal_errors_total", where="log_sink") == 2
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Record was" not in err  # loguru's own dump
    assert SECRET not in err
    assert '"where": "log_sink"' in err  # reported once, as one JSON line


def test_a_sink_that_blocks_does_not_block_the_caller_and_drops_are_counted(
        registry: CollectorRegistry) -> None:
    release = threading.Event()
    received: list[str] = []

    def stuck(text: str) -> None:
        release.wait(30)
        received.append(text)

    instrument.configure_logging(sink=stuck, queue_size=100)
    total = 2000

    def log_all() -> None:
        for i in range(total):
            logger.info("line {}", i)

    caller = threading.Thread(target=log_all)
    caller.start()
    caller.join(20)
    assert not caller.is_alive(), "a blocked sink stalled the logging call"
    dropped = value(registry, "instrument_log_lines_dropped_total")
    assert dropped > 0
    release.set()
    instrument.configure_logging(sink=lambda line: None)  # replaces (and drains) the queue
    written = sum(chunk.count("\n") for chunk in received)
    assert written + dropped == total  # every line is either written or counted dropped
    assert written <= 100 + 512  # the queue, plus one batch the writer held


def test_queued_lines_are_written_in_order_and_drained_on_replacement() -> None:
    received: list[str] = []
    instrument.configure_logging(sink=received.append, queue_size=1000)
    for i in range(50):
        logger.info("n={}", i)
    instrument.configure_logging(sink=lambda line: None)
    lines = "".join(received).splitlines()
    assert [line.split('"message":"')[1].split('"')[0] for line in lines] == [
        f"n={i}" for i in range(50)]


def test_a_raising_sink_behind_the_queue_is_counted(registry: CollectorRegistry) -> None:
    def broken(text: str) -> None:
        raise OSError("closed pipe")

    instrument.configure_logging(sink=broken, queue_size=10)
    logger.info("lost")
    wait_until(lambda: value(registry, "instrument_internal_errors_total", where="log_sink") == 1)


def test_the_writer_thread_ends_when_the_sink_is_replaced() -> None:
    before = {t.ident for t in threading.enumerate()}
    instrument.configure_logging(sink=lambda line: None, queue_size=10)
    writers = [t for t in threading.enumerate() if t.name == "instrument-log-writer"
               and t.ident not in before]
    assert len(writers) == 1
    instrument.configure_logging(sink=lambda line: None)
    writers[0].join(5)
    assert not writers[0].is_alive()


@pytest.mark.parametrize("bad", [-1, True, "100", 1.5])
def test_a_bad_queue_size_is_refused_at_configuration(bad: Any) -> None:
    with pytest.raises(ValueError, match="queue_size"):
        instrument.configure_logging(sink=lambda line: None, queue_size=bad)


def test_a_sink_that_is_neither_stream_nor_callable_is_refused() -> None:
    with pytest.raises(ValueError, match="sink"):
        instrument.configure_logging(sink=42)
