"""What one JSON log line costs, next to loguru's own floor and two other JSON loggers, in one run.

Rows, alternated round by round, each a median over rounds of the per-line cost:

- ``loguru_floor``: a bare ``logger.info("GET /items/7 200")`` to a sink that drops it,
  with a ``{message}`` format: the least loguru itself costs per line;
- ``ours_<event>``: the toolkit's own line for each event (the access log line, a provider
  call, an SSE stream's end, a cache lookup), made by the very function the toolkit calls,
  through ``configure_logging`` into a sink that drops it; once with the standard
  library's encoder (``_stdlib``: a plain install) and once with ``orjson`` (``[orjson]``);
- ``structlog_orjson``: structlog with orjson, the access line's fields, bound the same way;
- ``stdlib_json``: ``logging`` with a JSON formatter (``json.dumps`` of the record and its
  fields), the same fields.

Every row renders to nowhere: what is compared is the work of making the line.
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

import instrument
from instrument import _logging
from instrument._cache import log_lookup
from instrument._http import ServerRequest
from instrument._provider import ProviderCall
from instrument._sse import SSEStream

TRACE = "0af7651916cd43dd8448eb211c80319c"
ACCESS = {"event": "request", "method": "GET", "route": "/items/{item_id}", "path": "/items/7",
          "status": 200, "latency_ms": 1.234, "bytes": 14, "client": "127.0.0.1:5000",
          "trace_id": TRACE, "span_id": None}


class _Drop(io.TextIOBase):
    """A stream that keeps nothing."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _drop(line: str) -> None:
    """A sink that keeps nothing: the floor's own (``lambda message: None``) in our shape."""


def _per_line(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def _floor() -> Callable[[], Any]:
    def setup() -> None:
        logger.remove()
        logger.configure(patcher=None)
        logger.add(lambda message: None, format="{message}", level="DEBUG")
    setup.__name__ = "floor"
    return setup


def _ours(encoder: Callable[[dict[str, Any]], str]) -> Callable[[], None]:
    def setup() -> None:
        logger.remove()
        instrument.configure_logging("DEBUG", sink=_drop, intercept_stdlib=False)
        _logging.dumps = encoder
    return setup


def _events() -> dict[str, Callable[[], Any]]:
    """The toolkit's own log call for each event, on objects made once."""
    m = instrument.configure(registry=CollectorRegistry())
    req = ServerRequest("GET", "/items/7", {"x-trace-id": TRACE}, client="127.0.0.1:5000",
                        metrics=m)
    req.bytes_sent = 14
    with instrument.use_trace_id(TRACE):
        call = ProviderCall(m, "openai", "gpt-4o-mini", "chat", False, None)
        call.usage.merge((120, 40, 0, 0, 0, 0))
        stream = SSEStream(m, "/chat/stream", None)
    stream.events, stream.heartbeats = 12, 1
    return {
        "access": lambda: req._log("/items/{item_id}", 200, 0.001234, False, True),
        "provider": lambda: call._log("ok", None, 0.8123, 0.2012, 0.0000420, "bundled", None),
        "sse": lambda: stream.log_end("completed", 2.5, None),
        "cache": lambda: log_lookup("semantic", True, 0.00042),
    }


def _structlog() -> Callable[[], Any] | None:
    try:
        import orjson
        import structlog
    except ImportError:
        return None
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(serializer=orjson.dumps)],
        logger_factory=structlog.BytesLoggerFactory(file=open("/dev/null", "wb")),  # noqa: SIM115
        cache_logger_on_first_use=True)
    log = structlog.get_logger()
    fields = {("kind" if k == "event" else k): v for k, v in ACCESS.items()}  # "event" is theirs
    return lambda: log.info("GET /items/7 200", **fields)


class _JsonFormatter(logging.Formatter):
    """The usual hand-written JSON formatter for the standard library."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"timestamp": self.formatTime(record), "level": record.levelname,
                           "message": record.getMessage(), "logger": record.name,
                           **record.__dict__.get("fields", {})}, default=str)


def _stdlib_json() -> Callable[[], Any]:
    std = logging.getLogger("bench.json")
    std.propagate = False
    handler = logging.StreamHandler(_Drop())
    handler.setFormatter(_JsonFormatter())
    std.handlers = [handler]
    std.setLevel(logging.INFO)
    return lambda: std.info("GET /items/7 200", extra={"fields": ACCESS})


def bench(n: int, rounds: int) -> dict[str, float]:
    events = _events()
    rows: dict[str, tuple[Callable[[], None], Callable[[], Any]]] = {
        "loguru_floor": (_floor(), lambda: logger.info("GET /items/7 200"))}
    encoders = {"stdlib": _logging._dumps_stdlib}
    if _logging.orjson is not None:
        encoders["orjson"] = _logging._dumps_orjson
    for enc_name, encoder in encoders.items():
        for event, fn in events.items():
            rows[f"ours_{event}_{enc_name}"] = (_ours(encoder), fn)
    if (structlog_line := _structlog()) is not None:
        rows["structlog_orjson"] = (lambda: None, structlog_line)
    rows["stdlib_json"] = (lambda: None, _stdlib_json())
    default_dumps = _logging.dumps
    samples: dict[str, list[float]] = {k: [] for k in rows}
    try:
        for round_ in range(rounds + 1):  # the first round warms caches up and is dropped
            for name, (setup, fn) in rows.items():
                setup()
                figure = _per_line(fn, n)
                if round_:
                    samples[name].append(figure)
    finally:
        _logging.dumps = default_dumps
        logger.remove()
    med = {k: statistics.median(v) for k, v in samples.items()}
    out = {f"{k}_us": v for k, v in med.items()}
    floor = med["loguru_floor"]
    for name in med:
        if name != "loguru_floor":
            out[f"{name}_ratio"] = med[name] / floor
    return out


def main(quick: bool = False) -> dict[str, float]:
    n, rounds = (200, 1) if quick else (8000, 7)
    return bench(n, rounds)


def report(r: dict[str, float]) -> str:
    lines = ["logging (one JSON line each, one process, alternating, median of rounds)",
             f"  loguru floor (bare logger.info, '{{message}}', dropped): "
             f"{r['loguru_floor_us']:.2f} us"]
    for enc in ("stdlib", "orjson"):
        if f"ours_access_{enc}_us" not in r:
            continue
        figures = ", ".join(f"{event} {r[f'ours_{event}_{enc}_us']:.2f} us "
                            f"({r[f'ours_{event}_{enc}_ratio']:.2f}x)"
                            for event in ("access", "provider", "sse", "cache"))
        lines.append(f"  ours, {enc} encoder: {figures} (target <= 1.5x the floor)")
    if "structlog_orjson_us" in r:
        lines.append(f"  structlog+orjson: {r['structlog_orjson_us']:.2f} us "
                     f"({r['structlog_orjson_ratio']:.2f}x)")
    lines.append(f"  stdlib logging + JSON formatter: {r['stdlib_json_us']:.2f} us "
                 f"({r['stdlib_json_ratio']:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main()))
