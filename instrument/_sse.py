"""``@track_sse``: connections, duration, events, heartbeats and how each stream ended."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from instrument import _metrics, _observe
from instrument._context import current_request
from instrument._engine import (
    CANCELLED,
    CLOSED,
    ERROR,
    OK,
    AsyncStream,
    SyncStream,
    _safe_item,
    instrument_callable,
    kind_of,
    outcome_for,
)
from instrument._loggate import emit
from instrument._observe import TracedObserver, log_enabled, resolve_metrics

F = TypeVar("F", bound=Callable[..., Any])

HEARTBEAT_COMMENT = ": heartbeat\n\n"


class _Heartbeat:
    """Yield ``instrument.HEARTBEAT`` to send an SSE comment that counts as a heartbeat."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "instrument.HEARTBEAT"


HEARTBEAT = _Heartbeat()


def is_heartbeat(item: Any) -> bool:
    """SSE comments (``:``-prefixed text), the HEARTBEAT sentinel, or a comment-only event."""
    if item is HEARTBEAT:
        return True
    if isinstance(item, str):
        return item.startswith(":")
    if isinstance(item, bytes):
        return item.startswith(b":")
    if isinstance(item, dict):
        return "comment" in item and item.get("data") is None and item.get("event") is None
    # sse-starlette's ServerSentEvent(comment=...) with no data
    comment = getattr(item, "comment", None)
    return comment is not None and getattr(item, "data", None) is None


class SSEStream(TracedObserver):
    """One server-sent-events stream, from the generator call to its end."""

    __slots__ = ("__weakref__", "cut", "disconnected", "endpoint", "events", "first_event_at",
                 "heartbeat_item", "heartbeats")

    def __init__(self, metrics: _metrics.Metrics, endpoint: str, heartbeat_item: Any,
                 attach: bool = True) -> None:
        """``attach=False``: a served request measures its own plain SSE body with this."""
        super().__init__(metrics)
        self.endpoint = endpoint
        self.heartbeat_item = heartbeat_item
        self.events = 0
        self.heartbeats = 0
        self.first_event_at = 0.0
        self.disconnected = False
        self.cut = False
        metrics.sse_connections.child(endpoint).inc()
        metrics.sse_active.child(endpoint).inc()
        if attach and (request := current_request()) is not None:
            request.attach_stream(self)
        if _observe.bridge is not None:
            _observe.bridge.start(self)

    def client_disconnected(self) -> None:
        """Told by a server adapter: the client left, so a coming cancellation is a disconnect."""
        self.disconnected = True

    def server_cancelled(self) -> None:
        """Told by a server adapter: the server is cutting the response short (its shutdown),
        so a stream its consumer now drops was cancelled, not left by its client."""
        self.cut = True

    def abandoned(self) -> None:
        """Told by a server adapter: the response is over, so this stream is too (once)."""
        self.finish(CANCELLED, None)

    def item(self, value: Any) -> Any:
        if is_heartbeat(value):
            self.heartbeats += 1
            self.metrics.sse_heartbeats.child(self.endpoint).inc()
            return self.heartbeat_item if value is HEARTBEAT else value
        self.events += 1
        self.metrics.sse_events.child(self.endpoint).inc()
        if not self.first_event_at:
            self.first_event_at = perf_counter()
            self.metrics.sse_ttfe.child(self.endpoint).observe_trace(
                self.first_event_at - self.start, self.trace.trace_id)
        return value

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        if outcome == OK:
            label = "completed"
        elif outcome == ERROR:
            label = "error"
        elif self.disconnected:
            label = "client_disconnect"
        elif self.cut:
            label = "cancelled"  # the server cut it short, with the client still there
        elif outcome == CLOSED and (self.events or self.heartbeats):
            label = "client_disconnect"  # the consumer stopped reading half-way
        else:
            label = "cancelled"  # task cancelled, or never iterated at all
        m, endpoint = self.metrics, self.endpoint
        duration = perf_counter() - self.start
        m.sse_active.child(endpoint).dec()
        m.sse_duration.child(endpoint).observe_trace(duration, self.trace.trace_id)
        m.sse_closed.child(endpoint, label).inc()
        if log_enabled(20):
            self.log_end(label, duration, exc if outcome == ERROR else None)

    def log_end(self, label: str, duration: float, exc: BaseException | None) -> None:
        """The stream's one log line, at INFO."""
        emit("INFO", f"SSE stream {self.endpoint} ended: {label}", {
            "event": "sse_stream", "endpoint": self.endpoint, "outcome": label,
            "duration_ms": round(duration * 1000, 3), "events": self.events,
            "heartbeats": self.heartbeats,
            "error_type": type(exc).__name__ if exc is not None else None,
            "trace_id": self.trace.trace_id, "span_id": self.trace.span_id})


class HeartbeatStream(AsyncStream):
    """An async stream that sends a heartbeat whenever its source is silent for ``interval``.

    The source's ``__anext__`` runs as a pending asyncio task that survives
    heartbeats, so no item is lost, reordered or duplicated and the source is
    never cancelled mid-item; the task is cancelled and awaited only when the
    stream itself ends. asyncio only: cancelling a pending step is not safe to
    emulate on trio, so there it raises a clear error at the first step.
    """

    __slots__ = ("_interval", "_pending")

    def __init__(self, source: Any, obs: SSEStream, interval: float) -> None:
        super().__init__(source, obs)
        self._interval = interval
        self._pending: asyncio.Future[Any] | None = None

    def __anext__(self) -> Any:
        return self._next()

    async def _next(self) -> Any:
        obs = self._obs
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            err = RuntimeError("track_sse(heartbeat=...) needs asyncio; on trio, yield "
                               "instrument.HEARTBEAT from the generator instead")
            obs.finish(ERROR, err)
            raise err from None
        if self._pending is None:
            state = obs.enter()  # the task copies the context: the trace goes with it
            try:
                self._pending = asyncio.ensure_future(self._source.__anext__())
            finally:
                obs.leave(state)
        pending = self._pending
        try:
            done, _ = await asyncio.wait((pending,), timeout=self._interval)
        except BaseException as exc:  # the consumer was cancelled while waiting
            await self._drop_pending()
            obs.finish(outcome_for(exc), exc)
            raise
        if not done:
            return _safe_item(obs, HEARTBEAT)
        self._pending = None
        try:
            item = pending.result()
        except StopAsyncIteration:
            obs.finish(OK, None)
            raise
        except BaseException as exc:
            obs.finish(outcome_for(exc), exc)
            raise
        return _safe_item(obs, item)

    async def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.done():
            _retrieve(pending)
            return
        pending.cancel()
        try:
            await pending
        except BaseException:  # its cancellation or error ends with the stream
            pass

    async def aclose(self) -> None:
        await self._drop_pending()
        await super().aclose()

    def __del__(self) -> None:
        pending = self._pending
        if pending is not None and pending.done():
            _retrieve(pending)
        elif pending is not None:
            # the collector may run in any thread; a task is cancelled from its loop's
            try:
                pending.get_loop().call_soon_threadsafe(pending.cancel)
            except RuntimeError:  # the loop is closed: nothing left to cancel it on
                pass
        super().__del__()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a finished step's outcome as seen, so asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


def track_sse(endpoint: str, *, heartbeat: float | None = None,
              heartbeat_item: Any = HEARTBEAT_COMMENT, registry: Any = None) -> Callable[[F], F]:
    """Observe a Server-Sent-Events generator (sync or async) used as a response body.

    Items that are SSE comments (``:``-prefixed) or ``instrument.HEARTBEAT``
    count as heartbeats. With ``heartbeat=seconds`` (async generators, asyncio)
    the wrapper itself sends ``heartbeat_item`` whenever the source is silent
    that long. ``HEARTBEAT`` is replaced by ``heartbeat_item`` on its way out.
    """
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f"endpoint must be a non-empty string, got {endpoint!r}")
    if heartbeat is not None and not (isinstance(heartbeat, (int, float)) and heartbeat > 0):
        raise ValueError(f"heartbeat must be a positive number of seconds, got {heartbeat!r}")

    def decorate(func: F) -> F:
        # A function that merely returns a stream would be measured as a stream of
        # zero length; say so at decoration rather than record nonsense.
        kind = kind_of(func)
        if kind not in ("generator", "asyncgen"):
            raise TypeError(f"track_sse needs a generator function (def ... yield or async "
                            f"def ... yield), got {kind} {func!r}")
        if heartbeat is not None and kind != "asyncgen":
            raise TypeError("track_sse(heartbeat=...) needs an async generator function; a "
                            "sync generator can yield instrument.HEARTBEAT itself")

        def start(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SSEStream:
            return SSEStream(resolve_metrics(registry), endpoint, heartbeat_item)

        if heartbeat is None:
            return instrument_callable(func, start)

        def heartbeat_stream(source: Any, obs: SSEStream) -> HeartbeatStream:
            return HeartbeatStream(source, obs, float(heartbeat))

        return instrument_callable(func, start, (SyncStream, heartbeat_stream))

    return decorate

