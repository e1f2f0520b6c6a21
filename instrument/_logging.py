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

import calendar
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timezone
from types import FrameType
from typing import Any, TextIO

from loguru import logger

from instrument import _loggate, _metrics
from instrument._context import trace_context
from instrument._logqueue import LineQueue
from instrument._redact import REDACTED, is_secret_key, needs_scrub, redact, scrub

orjson: Any
try:  # the [orjson] extra: the same line, about ten times faster to serialise
    import orjson
except ImportError:  # pragma: no cover - exercised by the stdlib encoder tests
    orjson = None

__all__ = ["InterceptHandler", "configure_logging", "redact", "render"]

_RESERVED = ("timestamp", "level", "message", "logger", "trace_id", "span_id")
# Framework loggers that install their own handlers; we route them to loguru too.
_FRAMEWORK_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error",
                      "gunicorn.access", "werkzeug", "aiohttp.access", "aiohttp.server",
                      "httpx", "flask.app")

def _foreign(value: Any) -> Any:
    """A value JSON has no type for (an object, a set, bytes): its redacted form."""
    return redact(value)


_STDLIB = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_foreign)


def _dumps_stdlib(obj: dict[str, Any]) -> str:
    # ensure_ascii escapes every control and non-ASCII character: no input can
    # end the line early or smuggle a forged one in.
    return _STDLIB.encode(obj) + "\n"


def _dumps_orjson(obj: dict[str, Any]) -> str:
    try:
        line: str = orjson.dumps(obj, default=_foreign, option=_ORJSON_OPTIONS).decode()
    except Exception:  # lone surrogates, non-str keys, huge ints: the stdlib copes
        return _dumps_stdlib(obj)
    # orjson escapes control characters but writes the rest of Unicode raw, and
    # str.splitlines() also breaks on these three
    if not line.isascii() and ("\u2028" in line or "\u2029" in line or "\x85" in line):
        return _dumps_stdlib(obj)
    return line


if orjson is not None:
    # subclasses of str, dict, ... go through _foreign, as the standard library's would not
    _ORJSON_OPTIONS = (orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_SUBCLASS
                       | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME)

#: One JSON object and its newline (the values are JSON's own types: ``render`` sees to it).
dumps: Callable[[dict[str, Any]], str] = _dumps_orjson if orjson is not None else _dumps_stdlib

# -- one record, one line -------------------------------------------------------------------

_AS_IS = frozenset({str, int, float, bool, type(None)})
# "000" .. "999": a timestamp's microseconds as two table lookups, not a format call.
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))
_MAX_PLANS = 1024


class _Plan:
    """What to do with the ``extra`` fields of records that have these names (in this order):
    decided once per set of names, which in a program is a small set."""

    __slots__ = ("reserved", "secret")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.secret = tuple(n for n in names if n not in _RESERVED and is_secret_key(n))
        # bound under a name of the line's own: the line's value is put back over it
        self.reserved = any(n in ("timestamp", "level", "message", "logger") for n in names)


_plans: dict[tuple[str, ...], _Plan] = {}


def _plan(names: tuple[str, ...]) -> _Plan:
    plan = _plans.get(names)
    if plan is None:
        plan = _Plan(names)
        if len(_plans) < _MAX_PLANS:  # names can come from callers: bounded
            _plans[names] = plan
    return plan


class _Clock:
    """A record's time in UTC, read off its ``elapsed`` (a plain timedelta, cheap to read)
    since loguru's start time: ``base_s``/``base_us`` are that start in UTC, and ``prefix``
    the ``YYYY-MM-DDTHH:MM:SS.`` of the second last seen, made once a second."""

    base_s = base_us = 0
    second = -1
    prefix = ""

    @classmethod
    def miss(cls, record: Any, second: int) -> str:
        """A new second: check it against the record's own clock, and format it."""
        moment = record["time"]
        if int(moment.timestamp()) != second:  # a first record, or loguru counts differently
            start = (moment - record["elapsed"]).astimezone(timezone.utc)
            cls.base_s, cls.base_us = calendar.timegm(start.timetuple()), start.microsecond
            elapsed = record["elapsed"]
            micro = cls.base_us + elapsed.microseconds
            second = cls.base_s + elapsed.days * 86400 + elapsed.seconds + micro // 1_000_000
        cls.second = second
        cls.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return cls.prefix


def render(record: Any) -> str:
    """A loguru record as one JSON object on one line (with its newline), secrets redacted.

    Text is scrubbed (``_redact.scrub``) when the message shows anything that could be a
    secret, or the line a ``name=value`` pair or a key shape; other values are scrubbed where
    they are nested, and written as they are when top-level text (their names decide).
    """
    extra = record["extra"]
    elapsed, clock = record["elapsed"], _Clock
    micro = clock.base_us + elapsed.microseconds
    second = clock.base_s + elapsed.days * 86400 + elapsed.seconds
    if micro >= 1_000_000:
        micro -= 1_000_000
        second += 1
    prefix = clock.prefix if second == clock.second else clock.miss(record, second)
    message = record["message"]
    obj = {
        "timestamp": prefix + _DIGITS3[micro // 1000] + _DIGITS3[micro % 1000] + "Z",
        "level": record["level"].name,
        "message": message,
        "logger": extra.get("logger") or record["name"],
        "trace_id": extra.get("trace_id"),
        "span_id": extra.get("span_id"),
    }
    plan = _plans.get(names := tuple(extra)) or _plan(names)
    if plan.reserved:  # a field under one of the line's own names: the line's value wins
        head = dict(obj)
        obj.update(extra)
        obj.update(head)
    else:
        obj.update(extra)  # after the head, in the fields' order: C speed, no Python loop
    for name in plan.secret:
        obj[name] = REDACTED
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        obj["exception"] = {
            "type": exc.type.__name__,
            "value": scrub(_exception_text(exc.value)),
            "traceback": scrub("".join(traceback.format_exception(exc.type, exc.value,
                                                                  exc.traceback))),
        }
    try:
        line = dumps(obj)  # objects JSON has no type for are redact()ed on the way (_foreign)
    except Exception:  # a cycle, a key JSON cannot take: redacted copies, made below, can
        line = ""
    # A nested mapping or list shows as '":{' or '":[' (inside a string a quote is escaped):
    # only then are the fields walked, so that nested secrets are redacted too.
    if (not line or '":{' in line or '":[' in line or needs_scrub(message) or "=" in line
            or "sk-" in line):
        for name, value in obj.items():
            kind = type(value)
            if kind is str:
                if name != "timestamp":
                    obj[name] = scrub(value)
            elif kind not in _AS_IS and name not in plan.secret:
                obj[name] = redact(value)
        line = dumps(obj)
    return line


def _exception_text(value: BaseException | None) -> str:
    try:
        return str(value)
    except Exception:
        return f"<exception str() failed: {type(value).__name__}>"


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

    def __init__(self, out: Any, queue_size: int, json: bool) -> None:
        self._json = json
        if hasattr(out, "write"):
            self._write: Callable[[str], Any] = out.write
            self._flush: Callable[[], Any] | None = getattr(out, "flush", None)
        else:
            self._write, self._flush = out, None  # a callable taking one finished line
        self._queue = (LineQueue(self._guarded_write, queue_size, self._dropped)
                       if queue_size else None)

    def write(self, message: Any) -> None:
        try:
            line = render(message.record) if self._json else _render_text(message)
        except Exception as exc:
            _metrics.report_internal_error("log_render", exc, via_logger=False)
            return
        if self._queue is not None:
            self._queue.put(line)
            return
        try:  # _guarded_write, inlined: this runs for every line
            self._write(line)
            if self._flush is not None:
                self._flush()
        except Exception as exc:
            _metrics.report_internal_error("log_sink", exc, via_logger=False)

    def _guarded_write(self, text: str) -> None:
        try:
            self._write(text)
            if self._flush is not None:
                self._flush()
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
        ctx = trace_context.get()
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
    # every argument checked before anything changes: a refused call keeps the sink in place
    if isinstance(level, str):
        level = level.upper()
        logger.level(level)  # raises ValueError now for an unknown level name
    elif isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level must be a level name such as 'INFO' or a number >= 0, got "
                        f"{level!r}")
    elif level < 0:
        raise ValueError(f"level must be a level name such as 'INFO' or a number >= 0, got "
                         f"{level!r}")
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
    _sink = _Sink(sink, queue_size, json)
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
