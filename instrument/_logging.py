"""JSON log lines through loguru, each carrying the current trace and span IDs.

As a library, ``instrument`` adds no sink of its own and emits nothing until
the application opts in (``_loggate``). ``configure_logging()`` is that
opt-in: it installs one sink writing one JSON object per line, routes the
standard library's ``logging`` into it, and stamps every record with
``trace_id``/``span_id`` through a patcher.

The sink renders each record once, in the logging call: the timestamp's
seconds are formatted once per second, names are classified secret or not
once, text is scanned for secrets only when a quick look finds something
that could be one, and the object is serialised once (with ``orjson`` when
installed, else the standard library; the line is the same).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from loguru import logger

from instrument import _loggate, _metrics
from instrument._context import _current
from instrument._logqueue import LineQueue
from instrument._redact import REDACTED, is_secret_key, redact, scrub

orjson: Any
try:  # the [orjson] extra: the same line, about ten times faster to serialise
    import orjson
except ImportError:  # pragma: no cover - exercised by the stdlib encoder tests
    orjson = None

__all__ = ["InterceptHandler", "configure_logging", "redact", "render"]

_RESERVED = frozenset({"timestamp", "level", "message", "logger", "trace_id", "span_id"})
_SCALARS = frozenset({int, float, bool, type(None)})
# Framework loggers that install their own handlers; we route them to loguru too.
_FRAMEWORK_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error",
                      "gunicorn.access", "werkzeug", "aiohttp.access", "aiohttp.server",
                      "httpx", "flask.app")
# Characters str.splitlines() breaks on that orjson (unlike ensure_ascii) writes raw.
_LINE_BREAKS = ("\u2028", "\u2029", "\x85")

_STDLIB = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


def _dumps_stdlib(obj: dict[str, Any]) -> str:
    # ensure_ascii escapes every control and non-ASCII character: no input can
    # end the line early or smuggle a forged one in.
    return _STDLIB.encode(obj)


def _dumps_orjson(obj: dict[str, Any]) -> str:
    try:
        line: str = orjson.dumps(obj, default=str).decode()
    except Exception:  # lone surrogates, non-str keys, huge ints: the stdlib copes
        return _STDLIB.encode(obj)
    if "\u2028" in line or "\u2029" in line or "\x85" in line:
        return _STDLIB.encode(obj)
    return line


dumps: Callable[[dict[str, Any]], str] = _dumps_orjson if orjson is not None else _dumps_stdlib

# -- timestamps -------------------------------------------------------------------------------

_stamp_second = -1
_stamp_prefix = ""


def _timestamp(moment: Any) -> str:
    """ISO 8601 in UTC with microseconds, ``2026-12-03T09:40:01.123456Z``."""
    global _stamp_second, _stamp_prefix
    second = int(moment.timestamp())
    if second != _stamp_second:  # once a second, not once a line
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
        return f"{_stamp_prefix}.{moment.microsecond:06d}Z"
    return f"{_stamp_prefix}.{moment.microsecond:06d}Z"


# -- one record, one line -------------------------------------------------------------------

def _line_needs_scrub(line: str) -> bool:
    # As rendered, a quote inside a value is escaped (\"), so '\":' is a quoted name inside
    # a value, where '":' alone is just the line's own structure.
    return ("=" in line or "sk-" in line or "earer " in line or "asic " in line
            or "':" in line or '\\":' in line or "EARER " in line or "ASIC " in line)


def render(record: Any) -> str:
    """A loguru record as one JSON object on one line, secrets redacted (no newline)."""
    extra = record["extra"]
    obj: dict[str, Any] = {
        "timestamp": _timestamp(record["time"]),
        "level": record["level"].name,
        "message": record["message"],
        "logger": extra.get("logger") or record["name"],
        "trace_id": extra.get("trace_id"),
        "span_id": extra.get("span_id"),
    }
    for key, value in extra.items():
        if key in _RESERVED:
            continue
        if is_secret_key(key):
            obj[key] = REDACTED
        elif type(value) is str or type(value) in _SCALARS:
            obj[key] = value  # text is scrubbed below if the line shows a reason to
        else:
            obj[key] = redact(value)
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        obj["exception"] = {
            "type": exc.type.__name__,
            "value": scrub(_exception_text(exc.value)),
            "traceback": scrub("".join(traceback.format_exception(exc.type, exc.value,
                                                                  exc.traceback))),
        }
    line = dumps(obj)
    if _line_needs_scrub(line):
        for key, value in obj.items():
            if type(value) is str and key not in ("timestamp", "level"):
                obj[key] = scrub(value)
        line = dumps(obj)
    return line


def _exception_text(value: BaseException | None) -> str:
    try:
        return str(value)
    except Exception:
        return f"<exception str() failed: {type(value).__name__}>"


def _render_json(message: Any) -> str:
    return render(message.record) + "\n"


def _render_text(message: Any) -> str:
    exc = message.record["exception"]
    if exc is None or exc.type is None:
        return str(message)
    return str(message) + scrub("".join(traceback.format_exception(exc.type, exc.value,
                                                                   exc.traceback)))


class _Sink:
    """What loguru writes to (a stream, to loguru): renders each record, hands the line on.

    Rendering and writing never raise into the logging call: a failure is
    counted in ``instrument_internal_errors_total`` and reported once on
    stderr, without the record's fields.
    """

    def __init__(self, out: Any, queue_size: int, render: Callable[[Any], str]) -> None:
        self._render = render
        if hasattr(out, "write"):
            stream = out
            flush = getattr(stream, "flush", None)

            def write(text: str) -> None:
                stream.write(text)
                if flush is not None:
                    flush()

            self._out: Callable[[str], None] = write
        else:
            self._out = out  # a callable taking one finished line
        self._queue = (LineQueue(self._guarded_write, queue_size, self._dropped)
                       if queue_size else None)

    def write(self, message: Any) -> None:
        try:
            line = self._render(message)
        except Exception as exc:
            _metrics.report_internal_error("log_render", exc, via_logger=False)
            return
        if self._queue is not None:
            self._queue.put(line)
        else:
            self._guarded_write(line)

    def _guarded_write(self, text: str) -> None:
        try:
            self._out(text)
        except Exception as exc:
            # Not through loguru: its handlers are not re-entrant, so logging from
            # inside a sink only produces loguru's own error dump.
            _metrics.report_internal_error("log_sink", exc, via_logger=False)

    @staticmethod
    def _dropped() -> None:
        try:
            _metrics.current().log_dropped.inc()
        except Exception:
            pass

    def stop(self) -> None:  # loguru calls this when the handler is removed
        if self._queue is not None:
            self._queue.stop()

    def after_fork(self) -> None:
        if self._queue is not None:
            self._queue.after_fork()


# -- readable text (json=False) ------------------------------------------------------------

def _text_format(record: Any) -> str:
    record["extra"].setdefault("trace_id", None)
    # escaped, so newlines in user-supplied messages cannot start a new line
    record["extra"]["_instrument_msg"] = json.dumps(scrub(record["message"]),
                                                    ensure_ascii=True)[1:-1]
    return ("<green>{time:YYYY-MM-DDTHH:mm:ss.SSSZ}</green> <level>{level: <8}</level> "
            "trace=<cyan>{extra[trace_id]}</cyan> {name}: {extra[_instrument_msg]}\n")


# -- the standard library -------------------------------------------------------------------

class InterceptHandler(logging.Handler):
    """Route standard-library log records into loguru (loguru's documented recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # loguru reports the frame that called logging, however deep logging's own calls
        # went (logger.exception adds one, a LoggerAdapter another)
        frame: FrameType | None = sys._getframe()
        depth = 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.bind(logger=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage())


def _patch(record: Any) -> None:
    """Stamp the caller's trace context on the record (runs in the logging call's context)."""
    extra = record["extra"]
    if "trace_id" not in extra or "span_id" not in extra:
        ctx = _current.get()
        extra.setdefault("trace_id", ctx.trace_id if ctx is not None else None)
        extra.setdefault("span_id", ctx.span_id if ctx is not None else None)


# -- the opt-in -----------------------------------------------------------------------------

_sink_id: int | None = None
_sink: _Sink | None = None


def _after_fork() -> None:
    if _sink is not None:
        _sink.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def configure_logging(level: str | int = "INFO", *, json: bool = True,
                      sink: TextIO | Callable[[str], Any] | Any = sys.stderr,
                      intercept_stdlib: bool = True, queue_size: int = 0) -> int:
    """Turn the toolkit's logging on: one JSON object per line (or readable text) to ``sink``.

    ``sink`` is a stream (``write``/``flush``) or a callable taking each
    finished line. ``queue_size=0`` writes in the logging call; ``N > 0``
    hands lines to a writer thread through a queue of at most ``N`` lines, so
    a slow sink never stalls the caller; lines arriving while it is full are
    dropped and counted in ``instrument_log_lines_dropped_total``. Replaces the
    sink of a previous call (and loguru's default stderr sink), enables the
    ``instrument`` logger, routes ``logging`` into loguru unless
    ``intercept_stdlib`` is False, and returns the loguru handler ID.
    """
    global _sink_id, _sink
    if isinstance(level, str):
        level = level.upper()
        logger.level(level)  # raises ValueError now for an unknown level name
    if (not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 0):
        raise ValueError(f"queue_size must be an integer >= 0, got {queue_size!r}")
    if not (hasattr(sink, "write") or callable(sink)):
        raise ValueError(f"sink must be a stream with write() or a callable, got "
                         f"{type(sink).__name__}")
    if _sink_id is not None:
        try:
            logger.remove(_sink_id)
        except ValueError:
            pass
    else:
        try:
            logger.remove(0)  # loguru's default stderr handler
        except ValueError:
            pass
    _sink_id = _sink = None
    logger.configure(patcher=_patch)
    _sink = _Sink(sink, queue_size, _render_json if json else _render_text)
    # A JSON line is rendered by the sink itself: loguru's own format step is left empty.
    _sink_id = logger.add(_sink, level=level, format="" if json else _text_format,
                          colorize=False, backtrace=False, diagnose=False, catch=True)
    logger.enable(_loggate.NAME)
    if intercept_stdlib:
        logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
        for name in _FRAMEWORK_LOGGERS:
            std = logging.getLogger(name)
            std.handlers = []
            std.propagate = True
    return _sink_id
