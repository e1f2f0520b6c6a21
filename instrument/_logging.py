"""JSON log lines through loguru, each carrying the current trace and span IDs.

As a library, ``instrument`` adds no sink of its own: its events are ordinary
loguru records with their fields in ``extra``. ``configure_logging()`` is the
application's opt-in: it installs one sink writing one JSON object per line,
routes the standard library's ``logging`` into it, and stamps every record
with ``trace_id``/``span_id`` through a patcher.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import timezone
from functools import lru_cache
from types import FrameType
from typing import Any, TextIO

from loguru import logger

from instrument._context import _current

# Keys whose values never reach a log line: matched case-insensitively as substrings.
SECRET_KEYS = ("api_key", "apikey", "authorization", "token", "secret", "password", "cookie",
               "x-api-key", "credential", "session")
# Fields that look secret-ish but are counts or IDs we emit ourselves.
_SAFE_KEYS = frozenset({"input_tokens", "output_tokens", "cached_input_tokens", "total_tokens",
                        "tokens", "max_tokens", "trace_id", "span_id", "session_count"})
REDACTED = "[REDACTED]"
_JSON_KEY = "_instrument_json"
_RESERVED = ("timestamp", "level", "message", "logger", "trace_id", "span_id")
# Framework loggers that install their own handlers; we route them to loguru too.
_FRAMEWORK_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error",
                      "gunicorn.access", "werkzeug", "aiohttp.access", "aiohttp.server",
                      "httpx", "flask.app")


_MARKERS = tuple(marker.replace("-", "_") for marker in SECRET_KEYS)
_SCALARS = frozenset({str, int, float, bool, type(None)})


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether values under this key are redacted (cached: log field names are a small set)."""
    # Header spellings (``api-key``, Azure OpenAI's) are matched like field names.
    lowered = key.lower().replace("-", "_")
    if lowered in _SAFE_KEYS:
        return False
    # "tokens" (plural) names a count such as prompt_tokens, never a credential.
    lowered = lowered.replace("tokens", "")
    return any(marker in lowered for marker in _MARKERS)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with the values under secret-looking keys replaced."""
    if type(value) in _SCALARS or _depth > 6:
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact(v, _depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, _depth + 1) for v in value]
    return value


def _patch(record: Any) -> None:
    """Stamp the caller's trace context on the record (runs in the logging call's context)."""
    extra = record["extra"]
    if "trace_id" not in extra or "span_id" not in extra:
        ctx = _current.get()
        extra.setdefault("trace_id", ctx.trace_id if ctx is not None else None)
        extra.setdefault("span_id", ctx.span_id if ctx is not None else None)


def to_json(record: Any) -> str:
    """Render a loguru record as one JSON object on one line."""
    extra = record["extra"]
    obj: dict[str, Any] = {
        "timestamp": record["time"].astimezone(timezone.utc).isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": extra.get("logger") or record["name"],
        "trace_id": extra.get("trace_id"),
        "span_id": extra.get("span_id"),
    }
    for key, value in extra.items():
        if key == _JSON_KEY or key in _RESERVED or key == "logger":
            continue
        obj[key] = REDACTED if is_secret_key(key) else redact(value)
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        import traceback

        obj["exception"] = {
            "type": exc.type.__name__,
            "value": str(exc.value),
            "traceback": "".join(traceback.format_exception(exc.type, exc.value, exc.traceback)),
        }
    # ensure_ascii escapes every control and non-ASCII character: no input can
    # end the line early or smuggle a forged one in.
    return json.dumps(obj, default=str, ensure_ascii=True)


def _json_format(record: Any) -> str:
    record["extra"][_JSON_KEY] = to_json(record)
    return "{extra[" + _JSON_KEY + "]}\n"


def _text_format(record: Any) -> str:
    record["extra"].setdefault("trace_id", None)
    # repr() keeps newlines in user-supplied messages from starting a new line
    record["extra"]["_instrument_msg"] = json.dumps(record["message"], ensure_ascii=True)[1:-1]
    return ("<green>{time:YYYY-MM-DDTHH:mm:ss.SSSZ}</green> <level>{level: <8}</level> "
            "trace=<cyan>{extra[trace_id]}</cyan> {name}: {extra[_instrument_msg]}\n{exception}")


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


class _GuardedStream:
    """A stream sink whose write errors (a full disk, a closed pipe) are counted, not raised."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __call__(self, message: str) -> None:
        try:
            self._stream.write(message)
            self._stream.flush()
        except Exception as exc:
            from instrument._metrics import report_internal_error

            # Not through loguru: its handlers are not re-entrant, so logging from
            # inside a sink only produces loguru's own error dump.
            report_internal_error("log_sink", exc, via_logger=False)


_sink_id: int | None = None


def configure_logging(level: str | int = "INFO", *, json: bool = True,
                      sink: TextIO | Any = sys.stderr, intercept_stdlib: bool = True) -> int:
    """Install the application's log sink: one JSON object per line (or readable text).

    Replaces the sink installed by a previous call (and loguru's default
    stderr sink), routes ``logging`` into loguru unless ``intercept_stdlib``
    is False, and returns the loguru handler ID.
    """
    global _sink_id
    if isinstance(level, str):
        level = level.upper()
        logger.level(level)  # raises ValueError now for an unknown level name
    fmt = _json_format if json else _text_format
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
    logger.configure(patcher=_patch)
    if hasattr(sink, "write"):
        sink = _GuardedStream(sink)
    _sink_id = logger.add(sink, level=level, format=fmt, colorize=False if json else None,
                          backtrace=False, diagnose=False, catch=True)
    if intercept_stdlib:
        logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
        for name in _FRAMEWORK_LOGGERS:
            std = logging.getLogger(name)
            std.handlers = []
            std.propagate = True
    return _sink_id
