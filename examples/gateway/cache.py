"""An in-memory answer cache with a time to live, its lookups observed by ``@track_cache``."""

from __future__ import annotations

import time

from instrument import track_cache


def cache_key(question: str) -> str:
    """Questions that differ only in case or spacing share an answer."""
    return " ".join(question.lower().split())


class TTLCache:
    """Answers by question, each kept ``ttl`` seconds; the oldest go first past ``max_items``."""

    def __init__(self, ttl: float = 300.0, max_items: int = 1024) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._items: dict[str, tuple[float, str]] = {}

    @track_cache("answers")  # None is a miss: cache_hits_total / cache_misses_total
    def get(self, question: str) -> str | None:
        key = cache_key(question)
        entry = self._items.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if expires < time.monotonic():
            del self._items[key]
            return None
        return answer

    def set(self, question: str, answer: str) -> None:
        key = cache_key(question)
        self._items.pop(key, None)  # re-inserted last: dict order is age order
        while len(self._items) >= self.max_items:
            del self._items[next(iter(self._items))]
        self._items[key] = (time.monotonic() + self.ttl, answer)
