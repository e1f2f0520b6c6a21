"""Tests for header propagation: X-Trace-ID and traceparent, read from any header type, written."""

from __future__ import annotations

import re
from typing import Any

import pytest

from instrument import extract_trace_id, inject_headers, trace_headers, trace_span, use_trace_id
from instrument._propagation import extract_context, extract_wsgi, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TP_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")


# --- extract: containers -----------------------------------------------------


@pytest.mark.parametrize("name", ["X-Trace-ID", "x-trace-id", "X-TRACE-ID", "x-Trace-Id"])
def test_extract_reads_a_dict_in_any_case(name: str) -> None:
    assert extract_trace_id({"Accept": "*/*", name: "req-1"}) == "req-1"


@pytest.mark.parametrize("name", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_extract_reads_traceparent_in_any_case(name: str) -> None:
    assert extract_trace_id({name: TRACEPARENT}) == TRACE


def test_extract_reads_a_list_of_str_pairs() -> None:
    assert extract_trace_id([("Accept", "*/*"), ("X-Trace-Id", "req-2")]) == "req-2"
    assert extract_trace_id((("traceparent", TRACEPARENT),)) == TRACE


def test_extract_reads_asgi_bytes_pairs() -> None:
    assert extract_trace_id([(b"host", b"x"), (b"x-trace-id", b"req-3")]) == "req-3"
    assert extract_trace_id([(b"TraceParent", TRACEPARENT.encode())]) == TRACE


def test_extract_returns_none_without_trace_headers() -> None:
    assert extract_trace_id({}) is None
    assert extract_trace_id([]) is None
    assert extract_trace_id({"Accept": "*/*"}) is None
    assert extract_trace_id(None) is None


def test_extract_reads_werkzeug_headers_and_environ_headers() -> None:
    datastructures = pytest.importorskip("werkzeug.datastructures")
    assert extract_trace_id(datastructures.Headers([("x-trace-id", "wz-1")])) == "wz-1"
    environ = {"HTTP_X_TRACE_ID": "wz-2", "HTTP_ACCEPT": "*/*"}
    assert extract_trace_id(datastructures.EnvironHeaders(environ)) == "wz-2"
    environ = {"HTTP_TRACEPARENT": TRACEPARENT}
    assert extract_trace_id(datastructures.EnvironHeaders(environ)) == TRACE


def test_extract_reads_aiohttp_cimultidict() -> None:
    multidict = pytest.importorskip("multidict")
    headers = multidict.CIMultiDict([("X-TRACE-ID", "aio-1"), ("Accept", "*/*")])
    assert extract_trace_id(headers) == "aio-1"
    assert extract_trace_id(multidict.CIMultiDictProxy(headers)) == "aio-1"


def test_extract_reads_httpx_headers() -> None:
    httpx = pytest.importorskip("httpx")
    assert extract_trace_id(httpx.Headers({"X-Trace-Id": "hx-1"})) == "hx-1"
    assert extract_trace_id(httpx.Headers({"TraceParent": TRACEPARENT})) == TRACE


def test_extract_reads_starlette_headers() -> None:
    datastructures = pytest.importorskip("starlette.datastructures")
    scope = {"type": "http", "headers": [(b"x-trace-id", b"st-1")]}
    assert extract_trace_id(datastructures.Headers(scope=scope)) == "st-1"
    raw = [(b"traceparent", TRACEPARENT.encode())]
    assert extract_trace_id(datastructures.Headers(raw=raw)) == TRACE


# --- extract: precedence -----------------------------------------------------


def test_a_valid_x_trace_id_wins_over_a_valid_traceparent() -> None:
    assert extract_trace_id({"X-Trace-ID": "req-7", "traceparent": TRACEPARENT}) == "req-7"


def test_a_valid_traceparent_wins_over_an_invalid_x_trace_id() -> None:
    assert extract_trace_id({"X-Trace-ID": "bad id", "traceparent": TRACEPARENT}) == TRACE
    assert extract_context({"X-Trace-ID": "bad id", "traceparent": TRACEPARENT}) == (TRACE,
                                                                                     PARENT)


def test_an_invalid_x_trace_id_is_returned_for_use_trace_id_to_replace() -> None:
    headers = {"X-Trace-ID": "bad\nid", "traceparent": f"ff-{TRACE}-{PARENT}-01"}
    assert extract_trace_id(headers) == "bad\nid"
    with use_trace_id(extract_trace_id(headers)) as bound:
        assert bound != "bad\nid"


def test_the_remote_parent_comes_along_only_when_both_headers_agree() -> None:
    assert extract_context({"X-Trace-ID": TRACE, "traceparent": TRACEPARENT}) == (TRACE, PARENT)
    assert extract_context({"X-Trace-ID": OTHER_TRACE, "traceparent": TRACEPARENT}) == (
        OTHER_TRACE, None)
    assert extract_context({"traceparent": TRACEPARENT}) == (TRACE, PARENT)
    assert extract_context({}) == (None, None)


# --- traceparent validation -------------------------------------------------


@pytest.mark.parametrize("value", [
    pytest.param(f"ff-{TRACE}-{PARENT}-01", id="version-ff"),
    pytest.param(f"00-{'0' * 32}-{PARENT}-01", id="zero-trace-id"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="zero-parent-id"),
    pytest.param(f"00-{TRACE[:-1]}-{PARENT}-01", id="short-trace-id"),
    pytest.param(f"00-{TRACE}0-{PARENT}-01", id="long-trace-id"),
    pytest.param(f"00-{TRACE}-{PARENT[:-1]}-01", id="short-parent-id"),
    pytest.param(f"00-{TRACE}-{PARENT}-1", id="short-flags"),
    pytest.param(f"0-{TRACE}-{PARENT}-01", id="short-version"),
    pytest.param(TRACEPARENT.upper(), id="uppercase"),
    pytest.param(f"00-{TRACE.upper()}-{PARENT}-01", id="uppercase-trace-id"),
    pytest.param(f"00-{TRACE}-{PARENT}-01-extra", id="version-00-with-extra-fields"),
    pytest.param(f"00-{TRACE}-{PARENT}-01-", id="version-00-with-trailing-dash"),
    pytest.param(f"01-{TRACE}-{PARENT}-01extra", id="future-version-extra-without-dash"),
    pytest.param(f"00_{TRACE}_{PARENT}_01", id="wrong-separator"),
    pytest.param(f"00-{'g' * 32}-{PARENT}-01", id="non-hex"),
    pytest.param("", id="empty"),
    pytest.param("00", id="truncated"),
])
def test_invalid_traceparents_are_rejected(value: str) -> None:
    assert parse_traceparent(value) is None
    assert extract_trace_id({"traceparent": value}) is None


@pytest.mark.parametrize("value", [
    pytest.param(TRACEPARENT, id="version-00"),
    pytest.param(f"00-{TRACE}-{PARENT}-00", id="not-sampled"),
    pytest.param(f"01-{TRACE}-{PARENT}-01", id="future-version"),
    pytest.param(f"cc-{TRACE}-{PARENT}-09-what-the-future-holds", id="future-version-extra"),
])
def test_valid_traceparents_are_accepted(value: str) -> None:
    assert parse_traceparent(value) == (TRACE, PARENT)


# --- inject ---------------------------------------------------------------


def test_inject_adds_nothing_outside_a_trace() -> None:
    headers: dict[str, str] = {"Accept": "*/*"}
    assert inject_headers(headers) is headers
    assert headers == {"Accept": "*/*"}
    pairs: list[tuple[str, str]] = []
    assert inject_headers(pairs) == []
    assert trace_headers() == []


def test_inject_into_a_dict_replaces_other_case_keys_and_keeps_the_rest() -> None:
    headers = {"x-trace-id": "stale", "X-TRACE-ID": "stale2", "TraceParent": "stale3",
               "Accept": "*/*"}
    with trace_span("call") as span:
        result = inject_headers(headers)
    assert result is headers
    assert headers == {"Accept": "*/*", "X-Trace-ID": span.trace_id,
                       "traceparent": f"00-{span.trace_id}-{span.span_id}-01"}


def test_inject_into_a_list_of_str_pairs() -> None:
    headers = [("Accept", "*/*"), ("X-Trace-Id", "stale")]
    with trace_span("call") as span:
        result = inject_headers(headers)
    assert result is headers
    assert headers == [("Accept", "*/*"), ("X-Trace-ID", span.trace_id),
                       ("traceparent", f"00-{span.trace_id}-{span.span_id}-01")]


def test_inject_into_asgi_bytes_pairs_writes_lowercase_bytes() -> None:
    headers = [(b"content-type", b"text/plain"), (b"X-Trace-ID", b"stale")]
    with trace_span("call") as span:
        inject_headers(headers)
    assert headers == [(b"content-type", b"text/plain"),
                       (b"x-trace-id", span.trace_id.encode()),
                       (b"traceparent", f"00-{span.trace_id}-{span.span_id}-01".encode())]


def test_inject_into_httpx_headers_replaces_case_insensitively() -> None:
    httpx = pytest.importorskip("httpx")
    headers = httpx.Headers({"x-trace-id": "stale", "Accept": "*/*"})
    with trace_span("call") as span:
        assert inject_headers(headers) is headers
    assert headers.get_list("X-Trace-ID") == [span.trace_id]
    assert headers["traceparent"] == f"00-{span.trace_id}-{span.span_id}-01"
    assert headers["accept"] == "*/*"


def test_inject_then_extract_round_trips_the_trace_and_parent_span() -> None:
    with trace_span("client") as span:
        headers = inject_headers({})
    assert extract_context(headers) == (span.trace_id, span.span_id)
    assert extract_trace_id(list(headers.items())) == span.trace_id


@pytest.mark.parametrize("trace_id", ["req-42", TRACE.upper(), "0" * 32, TRACE + "0"])
def test_traceparent_is_sent_only_for_32_lowercase_hex_nonzero_ids(trace_id: str) -> None:
    with use_trace_id(trace_id):
        headers = inject_headers({})
    assert headers == {"X-Trace-ID": trace_id}


def test_traceparent_outside_a_span_carries_the_remote_parent_or_a_fresh_span_id() -> None:
    with use_trace_id(TRACE, parent_span_id=PARENT):
        assert dict(trace_headers())["traceparent"] == TRACEPARENT
    with use_trace_id(TRACE):
        match = TP_RE.fullmatch(dict(trace_headers())["traceparent"])
    assert match is not None
    assert match.group(1) == TRACE
    assert match.group(2) != "0" * 16


def test_injected_headers_follow_the_innermost_span() -> None:
    seen: list[Any] = []
    with trace_span("outer") as outer:
        seen.append(dict(trace_headers()))
        with trace_span("inner") as inner:
            seen.append(dict(trace_headers()))
    assert seen[0]["traceparent"] == f"00-{outer.trace_id}-{outer.span_id}-01"
    assert seen[1]["traceparent"] == f"00-{outer.trace_id}-{inner.span_id}-01"
    assert seen[0]["X-Trace-ID"] == seen[1]["X-Trace-ID"] == outer.trace_id


# -- tracestate: carried on, untouched, with the traceparent it belongs to -----------------

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


@pytest.mark.parametrize(("value", "kept"), [
    (STATE, True), ("a=1", True), (" a=1 , b=2 ", True),
    ("", False), ("no-equals-sign", False), ("a=1,\r\nX-Injected: 1", False),
    ("a=1\u00e9", False), ("a=" + "x" * 511, False),
    (",".join(f"k{i}=v" for i in range(32)), True),
    (",".join(f"k{i}=v" for i in range(33)), False),
])
def test_tracestate_is_kept_untouched_or_dropped_whole(value: str, kept: bool) -> None:
    from instrument._propagation import parse_tracestate

    assert parse_tracestate(value) == (value if kept else None)


def _sent_upstream(headers: Any, extract: Any = None, trace_id: str | None = None
                   ) -> dict[str, str]:
    """The headers an instrumented httpx client sends while serving ``headers``."""
    import httpx

    from instrument._http import ServerRequest
    from instrument.adapters.httpx import instrument_client

    seen: dict[str, str] = {}

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200)

    served = (ServerRequest("GET", "/", headers) if extract is None
              else ServerRequest("GET", "/", headers, extract=extract))
    token = served.enter()
    try:
        with (use_trace_id(trace_id) if trace_id else trace_span("work")), instrument_client(
                httpx.Client(transport=httpx.MockTransport(upstream))) as client:
            client.get("http://upstream.test/")
    finally:
        served.exit(token)
    return seen


def test_a_continued_traceparent_sends_its_tracestate_on() -> None:
    sent = _sent_upstream([(b"traceparent", TP.encode()), (b"tracestate", STATE.encode())])
    assert sent["tracestate"] == STATE
    assert sent["traceparent"].split("-")[1] == TP.split("-")[1]
    environ = {"wsgi.version": (1, 0), "HTTP_TRACEPARENT": TP, "HTTP_TRACESTATE": STATE}
    assert _sent_upstream(environ, extract_wsgi)["tracestate"] == STATE


def test_no_tracestate_goes_on_for_another_trace_or_without_a_traceparent() -> None:
    other = [(b"x-trace-id", b"another-trace"), (b"traceparent", TP.encode()),
             (b"tracestate", STATE.encode())]
    assert "tracestate" not in _sent_upstream(other)  # X-Trace-ID wins: not that trace's state
    assert "tracestate" not in _sent_upstream([(b"tracestate", STATE.encode())])
    continued = [(b"traceparent", TP.encode()), (b"tracestate", STATE.encode())]
    switched = _sent_upstream(continued, trace_id="1" * 32)  # use_trace_id inside the request
    assert switched["x-trace-id"] == "1" * 32 and "tracestate" not in switched
    bad = [(b"traceparent", TP.encode()), (b"tracestate", b"a=1,\r\nx")]
    assert "tracestate" not in _sent_upstream(bad)
