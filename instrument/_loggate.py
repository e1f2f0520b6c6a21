"""Whether the toolkit's own log events are wanted: opted in, and at a level some sink takes.

``instrument`` follows loguru's advice for libraries: ``logger.disable("instrument")``
at import, so nothing it logs reaches any sink until the application opts in,
with ``configure_logging()`` or loguru's own ``logger.enable("instrument")``.
Every event of ours is built only after ``log_enabled(level)`` says yes, so a
call made before opt-in, or below the level, does no logging work at all: no
``bind``, no record, no formatting. ``emit()`` then logs it.
"""

from __future__ import annotations

import threading
from typing import Any

from loguru import logger

NAME = "instrument"

logger.disable(NAME)

# loguru keeps the lowest level any sink accepts (``min_level``) and the list of
# enable/disable calls (``activation_list``, replaced by a new list on each call)
# on its single, long-lived core object.
_core: Any = getattr(logger, "_core", None)
_seen: object = None  # the activation list _enabled was computed from
_enabled = False


def _activated(activation: list[tuple[str, bool]]) -> bool:
    """loguru's own rule for a module named ``instrument``: the most specific entry wins."""
    dotted = NAME + "."
    for prefix, status in activation:  # loguru keeps it sorted, most specific first
        if dotted.startswith(prefix):
            return bool(status)
    return True


def log_enabled(level_no: int) -> bool:
    """Whether a record of ours at this level would reach a sink (cheap: two reads)."""
    global _seen, _enabled
    core = _core
    if core is None:  # loguru's internals changed: just log, loguru still filters
        return True
    activation = core.activation_list
    if activation is not _seen:
        _enabled = _activated(activation)
        _seen = activation
    return _enabled and level_no >= core.min_level


# -- emitting an event ---------------------------------------------------------------------------

# An event's fields reach the record through a patcher of the toolkit's own logger (never
# loguru's global configuration): cheaper than keyword arguments, which loguru copies twice
# and formats the message with, and than bind(), which makes a logger per call. The fields
# wait in a thread-local for the one synchronous logging call that takes them.
_pending = threading.local()


def _add_fields(record: Any) -> None:
    fields = _pending.fields
    if fields is not None:
        _pending.fields = None
        record["extra"].update(fields)


# depth=1: the record names the function that called emit(), as a direct call would.
_events = logger.patch(_add_fields).opt(depth=1)


def emit(level: str, message: str, fields: dict[str, Any],
         exception: BaseException | None = None) -> None:
    """Log one event of ours: ``message`` exactly as given (no placeholders), ``fields`` in
    the record's ``extra``. Call it only after ``log_enabled(level)`` said yes."""
    _pending.fields = fields
    try:
        if exception is None:
            _events.log(level, message)
        else:
            _events.opt(exception=exception, depth=1).log(level, message)
    finally:
        _pending.fields = None
