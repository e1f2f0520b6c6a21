"""Tests for trace context: fresh IDs, validation of external IDs, isolation between tasks."""

from __future__ import annotations

import re

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from instrument import _context, get_span_id, get_trace_id, new_trace_id, trace_span, use_trace_id
from tests.conftest import LogCapture
from tests.helpers import value

HEX32 = re.compile(r"[0-9a-f]{32}")


# --- fresh IDs -------------------------------------------------------------


def test_new_trace_id_is_32_lowercase_hex_never_zero_and_unique() -> None:
    ids = [new_trace_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for trace_id in ids:
        assert HEX32.fullmatch(trace_id), trace_id
        assert trace_id != "0" * 32


def test_new_trace_id_draws_again_when_the_random_bits_are_all_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0, 0, 0xABC])
    monkeypatch.setattr(_context, "_getrandbits", lambda bits: next(draws))
    assert new_trace_id() == "0" * 29 + "abc"


def test_new_span_id_is_16_lowercase_hex_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", _context.new_span_id())
    draws = iter([0, 7])
    monkeypatch.setattr(_context, "_getrandbits", lambda bits: next(draws))
    assert _context.new_span_id() == "0" * 15 + "7"


def test_outside_any_trace_there_is_no_trace_or_span_id() -> None:
    assert get_trace_id() is None
    assert get_span_id() is None


# --- use_trace_id: accepted IDs --------------------------------------------


@pytest.mark.parametrize("trace_id", [
    "a",
    "req-42",
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "ABC.def_123:456-789",
    "0" * 32,  # a valid X-Trace-ID, even though W3C would not accept it as a trace-id
    "x" * 128,
    "1-5759e988-bd862e3fe1be46a994272793",  # AWS X-Ray style
])
def test_use_trace_id_binds_a_valid_id_for_its_body_only(trace_id: str, logs: LogCapture,
                                                        registry: CollectorRegistry) -> None:
    with use_trace_id(trace_id) as bound:
        assert bound == trace_id
        assert get_trace_id() == trace_id
        assert get_span_id() is None
    assert get_trace_id() is None
    assert logs.events("invalid_trace_id") == []
    assert value(registry, "trace_requests_total") == 1


def test_use_trace_id_binds_the_remote_parent_span_and_spans_become_its_children() -> None:
    with use_trace_id("4bf92f3577b34da6a3ce929d0e0e4736", parent_span_id="00f067aa0ba902b7"):
        assert get_span_id() == "00f067aa0ba902b7"
        with trace_span("child") as span:
            assert span.parent_span_id == "00f067aa0ba902b7"
            assert span.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert get_span_id() == "00f067aa0ba902b7"


def test_nested_use_trace_id_restores_the_outer_trace() -> None:
    with use_trace_id("outer"):
        with use_trace_id("inner"):
            assert get_trace_id() == "inner"
        assert get_trace_id() == "outer"
    assert get_trace_id() is None


def test_use_trace_id_restores_the_context_when_the_body_raises() -> None:
    with pytest.raises(KeyError), use_trace_id("abc"):
        raise KeyError("boom")
    assert get_trace_id() is None


# --- use_trace_id: rejected IDs --------------------------------------------

REJECTED = [
    pytest.param("", "", id="empty"),
    pytest.param("x" * 129, None, id="129-chars"),
    pytest.param("has space", "has space", id="space"),
    pytest.param("line\nbreak", "line\\nbreak", id="newline"),
    pytest.param("tab\there", "tab\\there", id="tab"),
    pytest.param("caf\u00e9", "caf\\xe9", id="non-ascii"),
    pytest.param("id\u2028next", "id\\u2028next", id="unicode-line-separator"),
    pytest.param("a=b", "a=b", id="equals-sign"),
    pytest.param(12345, "12345", id="int"),
    pytest.param(b"abc", "b'abc'", id="bytes"),
    pytest.param(None, "None", id="none"),
]


@pytest.mark.parametrize(("bad", "escaped"), REJECTED)
def test_an_invalid_trace_id_is_replaced_and_logged_escaped_never_raised(
        bad: object, escaped: str | None, logs: LogCapture) -> None:
    with use_trace_id(bad) as bound:
        assert bound != bad
        assert HEX32.fullmatch(bound)
        assert get_trace_id() == bound
    assert get_trace_id() is None

    (warning,) = logs.events("invalid_trace_id")
    assert warning["level"] == "WARNING"
    assert warning["trace_id"] == bound  # the warning names the trace that replaced it
    if escaped is not None:
        assert warning["rejected"] == escaped
    # The rejected value is printable ASCII: no raw control character reaches the sink.
    assert warning["rejected"].isascii()
    assert all(ch.isprintable() for ch in warning["rejected"])
    assert logs.text.count("\n") == len(logs.records) == 1


def test_a_long_rejected_id_is_truncated_in_the_warning(logs: LogCapture) -> None:
    with use_trace_id("y" * 5000 + " "):
        pass
    (warning,) = logs.events("invalid_trace_id")
    assert warning["rejected"].endswith("...(truncated)")
    assert warning["rejected"].startswith("yyyy")
    assert len(warning["rejected"]) <= 64 + len("...(truncated)")


def test_a_forged_log_line_inside_a_trace_id_stays_inside_the_warning(logs: LogCapture) -> None:
    forged = 'x\n{"level": "CRITICAL", "message": "forged", "event": "forged"}\n'
    with use_trace_id(forged):
        pass
    assert len(logs.records) == 1
    assert logs.events("forged") == []
    assert logs.records[0]["event"] == "invalid_trace_id"


# --- concurrency isolation -------------------------------------------------

TASKS = 200


@pytest.mark.anyio
async def test_concurrent_tasks_each_see_only_their_own_trace() -> None:
    """200 tasks bind their trace, wait until all are bound, then check it over many switches."""
    seen: dict[int, set[tuple[str | None, str | None]]] = {i: set() for i in range(TASKS)}
    expected: dict[int, str] = {}
    bound = 0
    all_bound = anyio.Event()

    async def rendezvous() -> None:
        # every task's trace is active at the same time before anyone checks
        nonlocal bound
        bound += 1
        if bound == TASKS:
            all_bound.set()
        await all_bound.wait()

    async def with_use_trace_id(i: int) -> None:
        with use_trace_id(f"task-{i}") as trace_id:
            expected[i] = trace_id
            await rendezvous()
            for _ in range(5):
                seen[i].add((get_trace_id(), None))
                await anyio.lowlevel.checkpoint()
            with trace_span("inner") as span:
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
                    seen[i].add((get_trace_id(), span.trace_id))
                    assert get_span_id() == span.span_id

    async def with_root_span(i: int) -> None:
        async with trace_span("root") as span:
            expected[i] = span.trace_id
            await rendezvous()
            for _ in range(5):
                seen[i].add((get_trace_id(), span.trace_id))
                await anyio.lowlevel.checkpoint()
                assert get_span_id() == span.span_id

    async with anyio.create_task_group() as tg:
        for i in range(TASKS):
            tg.start_soon(with_use_trace_id if i % 2 else with_root_span, i)

    assert len(set(expected.values())) == TASKS
    for i in range(TASKS):
        assert {trace_id for trace_id, _ in seen[i]} == {expected[i]}, i
        assert {span_trace for _, span_trace in seen[i]} <= {None, expected[i]}, i
    assert get_trace_id() is None  # nothing leaked into the parent task


@pytest.mark.anyio
async def test_a_child_task_inherits_the_trace_but_cannot_change_the_parents() -> None:
    child_saw: list[str | None] = []

    async def child() -> None:
        child_saw.append(get_trace_id())
        with use_trace_id("child-trace"):
            await anyio.lowlevel.checkpoint()

    with use_trace_id("parent-trace"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        assert get_trace_id() == "parent-trace"
    assert child_saw == ["parent-trace"]
