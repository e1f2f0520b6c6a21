"""The core request observer every server adapter drives (framework-free checks)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from instrument import get_trace_id
from instrument._context import current_request
from instrument._http import ServerRequest
from instrument._propagation import extract_context
from tests.helpers import value

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Stream:
    def __init__(self) -> None:
        self.told = False

    def client_disconnected(self) -> None:
        self.told = True


def test_a_tracked_stream_started_after_the_response_does_not_leak_the_fallback(
        registry: CollectorRegistry) -> None:
    """The fallback SSE measurement opened at response start is closed even if a
    @track_sse stream attaches later (a generator started lazily by the body)."""
    request = ServerRequest("GET", "/events", [(b"x-trace-id", TRACE.encode())])
    request.set_route("/events")
    request.response_started(200, sse=True)
    stream = Stream()
    request.attach_stream(stream)
    request.client_disconnected()
    request.finish()
    assert stream.told
    assert value(registry, "sse_active_connections", endpoint="/events") == 0
    assert value(registry, "sse_streams_closed_total", endpoint="/events",
                 outcome="client_disconnect") == 1
    assert value(registry, "http_requests_total", method="GET", route="/events",
                 status="200") == 1


def test_response_headers_carry_the_trace_without_binding_it() -> None:
    request = ServerRequest("GET", "/", [(b"traceparent",
                                          f"00-{TRACE}-00f067aa0ba902b7-01".encode())])
    headers = dict(request.response_headers())
    assert headers["X-Trace-ID"] == TRACE
    assert re.fullmatch(rf"00-{TRACE}-[0-9a-f]{{16}}-01", headers["traceparent"])
    raw = dict(request.raw_response_headers())
    assert raw[b"x-trace-id"] == TRACE.encode()
    assert get_trace_id() is None and current_request() is None  # nothing was bound
    token = request.enter()  # until the adapter binds it
    assert (get_trace_id(), current_request()) == (TRACE, request)
    request.exit(token)
    assert get_trace_id() is None


def test_one_pass_over_header_pairs_matches_any_case_and_takes_the_first() -> None:
    pairs = [("Content-Type", "x"), ("X-TRACE-ID", "abc"), ("x-trace-id", "second"),
             (b"TraceParent", f"00-{TRACE}-00f067aa0ba902b7-01".encode())]
    assert extract_context(pairs) == ("abc", None)
    assert extract_context(pairs[3:]) == (TRACE, "00f067aa0ba902b7")
