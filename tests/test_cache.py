"""Tests for ``@track_cache`` and ``record_cache``: hits, misses and lookup latency."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from instrument import configure_logging, record_cache, track_cache
from tests.conftest import LogCapture
from tests.helpers import value

pytestmark = pytest.mark.no_internal_errors


def counts(registry: CollectorRegistry, cache: str = "kv") -> tuple[float, float, float]:
    """(hits, misses, lookups timed)."""
    return (value(registry, "cache_hits_total", cache=cache),
            value(registry, "cache_misses_total", cache=cache),
            value(registry, "cache_lookup_duration_seconds_count", cache=cache))


STORE = {"a": "1", "empty": "", "zero": 0}


def test_none_is_a_miss_anything_else_a_hit(registry: CollectorRegistry,
                                            logs: LogCapture) -> None:
    @track_cache("kv")
    def get(key: str) -> Any:
        return STORE.get(key)

    assert get("a") == "1"
    assert get("missing") is None
    assert get("empty") == ""  # falsy values are still hits
    assert get("zero") == 0
    assert counts(registry) == (3, 1, 4)
    events = logs.events("cache")
    assert [(e["cache"], e["hit"], e["level"]) for e in events] == [
        ("kv", True, "DEBUG"), ("kv", False, "DEBUG"), ("kv", True, "DEBUG"),
        ("kv", True, "DEBUG")]
    assert all(isinstance(e["latency_ms"], float) and e["latency_ms"] >= 0 for e in events)


def test_cache_events_are_debug_only(registry: CollectorRegistry) -> None:
    capture = LogCapture()
    configure_logging("INFO", sink=capture)

    @track_cache("kv")
    def get(key: str) -> Any:
        return STORE.get(key)

    get("a")
    assert capture.events("cache") == []
    assert counts(registry) == (1, 0, 1)


def test_custom_hit_predicate(registry: CollectorRegistry) -> None:
    @track_cache("redis", hit=lambda raw: raw != b"")
    def get(key: str) -> bytes:
        return b"" if key == "missing" else b"value"

    get("missing")
    get("a")
    get("b")
    assert counts(registry, "redis") == (2, 1, 3)


@pytest.mark.anyio
async def test_async_lookup(registry: CollectorRegistry, logs: LogCapture) -> None:
    @track_cache("kv")
    async def get(key: str) -> Any:
        await anyio.sleep(0)
        return STORE.get(key)

    assert await get("a") == "1"
    assert await get("nope") is None
    assert counts(registry) == (1, 1, 2)
    assert [e["hit"] for e in logs.events("cache")] == [True, False]


@pytest.mark.anyio
async def test_failed_lookup_is_neither_hit_nor_miss(registry: CollectorRegistry,
                                                     logs: LogCapture) -> None:
    err = ConnectionError("redis down")

    @track_cache("kv")
    async def get(key: str) -> Any:
        raise err

    @track_cache("kv")
    def sync_get(key: str) -> Any:
        raise err

    with pytest.raises(ConnectionError) as info:
        await get("a")
    assert info.value is err
    with pytest.raises(ConnectionError):
        sync_get("a")
    assert counts(registry) == (0, 0, 2)  # timed, not counted
    assert logs.events("cache") == []


@pytest.mark.anyio
async def test_cancelled_lookup_is_neither_hit_nor_miss(registry: CollectorRegistry) -> None:
    started = anyio.Event()

    @track_cache("kv")
    async def get(key: str) -> Any:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(get, "a")
        await started.wait()
        tg.cancel_scope.cancel()
    assert counts(registry) == (0, 0, 1)


def test_a_failing_predicate_does_not_break_the_lookup(registry: CollectorRegistry,
                                                       expect_internal_errors: None) -> None:
    def broken(result: Any) -> bool:
        raise KeyError("predicate bug")

    @track_cache("kv", hit=broken)
    def get(key: str) -> str:
        return "v"

    assert get("a") == "v"
    assert counts(registry)[:2] == (0, 0)
    assert value(registry, "instrument_internal_errors_total", where="CacheLookup") == 1


class Repo:
    def __init__(self) -> None:
        self.data = {"x": 1}

    @track_cache("repo")
    def get(self, key: str) -> int | None:
        return self.data.get(key)

    @classmethod
    @track_cache("repo")
    async def aget(cls, key: str) -> int | None:
        return None

    @staticmethod
    @track_cache("repo")
    def sget(key: str) -> int | None:
        return 7


@pytest.mark.anyio
async def test_methods_classmethods_and_staticmethods(registry: CollectorRegistry) -> None:
    repo = Repo()
    assert repo.get("x") == 1
    assert await Repo.aget("x") is None
    assert repo.sget("x") == 7
    assert counts(registry, "repo") == (2, 1, 3)


def test_record_cache_for_code_that_is_not_a_function(registry: CollectorRegistry,
                                                      logs: LogCapture) -> None:
    record_cache("kv", hit=True)
    record_cache("kv", hit=False, duration=0.002)
    record_cache("kv", True, 0.001)
    assert counts(registry) == (2, 1, 2)  # only the lookups with a duration are timed
    assert value(registry, "cache_lookup_duration_seconds_sum", cache="kv") == pytest.approx(
        0.003)
    events = logs.events("cache")
    assert [(e["hit"], e["latency_ms"]) for e in events] == [(True, None), (False, 2.0),
                                                             (True, 1.0)]


def test_decorator_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="cache"):
        track_cache("")
    with pytest.raises(ValueError, match="hit"):
        track_cache("kv", hit="yes")  # type: ignore[arg-type]


def test_only_functions_can_be_tracked() -> None:
    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> AsyncIterator[int]:
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="plain or async function"):
            track_cache("kv")(fn)
