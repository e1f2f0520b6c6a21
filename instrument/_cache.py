"""``@track_cache`` and ``record_cache``: hit ratio and lookup latency."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from instrument import _metrics
from instrument._engine import OK, Observer, instrument_callable, kind_of
from instrument._loggate import emit
from instrument._observe import log_enabled, resolve_metrics

F = TypeVar("F", bound=Callable[..., Any])


def _is_hit(result: Any) -> bool:
    return result is not None


class CacheLookup(Observer):
    """One lookup: a hit or a miss (decided on the result), and how long it took."""

    __slots__ = ("cache", "hit", "metrics", "start")

    def __init__(self, metrics: _metrics.Metrics, cache: str, hit: Callable[[Any], bool]) -> None:
        self.ended = False
        self.metrics = metrics
        self.cache = cache
        self.hit = hit
        self.start = perf_counter()

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        duration = perf_counter() - self.start
        m = self.metrics
        m.cache_duration.child(self.cache).observe_current(duration)
        if outcome != OK:
            return  # a failed lookup is neither a hit nor a miss; the error is the caller's
        _count(m, self.cache, bool(self.hit(result)), duration)


def _count(m: _metrics.Metrics, cache: str, hit: bool, duration: float | None) -> None:
    (m.cache_hits if hit else m.cache_misses).child(cache).inc()
    if log_enabled(10):
        log_lookup(cache, hit, duration)


def log_lookup(cache: str, hit: bool, duration: float | None) -> None:
    """A lookup's one log line, at DEBUG."""
    result = "hit" if hit else "miss"
    emit("DEBUG", f"cache {cache} {result}", {
        "event": "cache", "cache": cache, "hit": hit, "result": result,
        "latency_ms": round(duration * 1000, 3) if duration is not None else None})


def record_cache(cache: str, hit: bool, duration: float | None = None, *,
                 registry: Any = None) -> None:
    """Count one cache lookup that is not a function call (``duration`` in seconds, optional)."""
    try:
        m = resolve_metrics(registry)
        if duration is not None:
            m.cache_duration.child(cache).observe_current(duration)
        _count(m, cache, bool(hit), duration)
    except Exception as exc:
        _metrics.report_internal_error("record_cache", exc)


def track_cache(cache: str, *, hit: Callable[[Any], bool] | None = None,
                registry: Any = None) -> Callable[[F], F]:
    """Observe a cache lookup function (sync or async): a ``None`` result is a miss.

    ``hit=`` takes a predicate on the result for caches whose miss is not ``None``.
    """
    if not isinstance(cache, str) or not cache:
        raise ValueError(f"cache must be a non-empty string, got {cache!r}")
    if hit is not None and not callable(hit):
        raise ValueError("hit must be a callable taking the lookup's result")
    predicate = hit or _is_hit

    def decorate(func: F) -> F:
        kind = kind_of(func)
        if kind not in ("function", "coroutine"):
            raise TypeError(f"track_cache needs a plain or async function, got {kind} {func!r}")

        def start(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CacheLookup:
            return CacheLookup(resolve_metrics(registry), cache, predicate)

        return instrument_callable(func, start)

    return decorate

