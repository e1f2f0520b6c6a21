"""The core request observer every server adapter drives (framework-free checks)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from instrument import get_trace_id, track_sse
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


def test_a_tracked_stream_the_body_starts_lazily_is_counted_once(
        registry: CollectorRegistry) -> None:
    """A ``@track_sse`` generator first called by the body, after the response started, is
    the stream: the request does not measure the same body as a second one."""
    @track_sse("/events")
    def events() -> Iterator[str]:
        yield "data: 1\n\n"
        yield "data: 2\n\n"

    request = ServerRequest("GET", "/events", [(b"x-trace-id", TRACE.encode())])
    token = request.enter()
    try:
        request.set_route("/events")
        request.response_started(200, sse=True)
        for chunk in events():  # what a lazy body does: the generator starts now
            request.body_sent(chunk.encode())
    finally:
        request.exit(token)
    request.finish()
    assert value(registry, "sse_connections_total", endpoint="/events") == 1
    assert value(registry, "sse_events_total", endpoint="/events") == 2
    assert value(registry, "sse_streams_closed_total", endpoint="/events",
                 outcome="completed") == 1
    assert value(registry, "sse_active_connections", endpoint="/events") == 0


def test_a_plain_sse_body_is_measured_as_a_stream_even_without_a_chunk(
        registry: CollectorRegistry) -> None:
    request = ServerRequest("GET", "/events", [])
    request.set_route("/events")
    request.response_started(200, sse=True)
    request.client_disconnected()
    request.finish()
    assert value(registry, "sse_connections_total", endpoint="/events") == 1
    assert value(registry, "sse_streams_closed_total", endpoint="/events",
                 outcome="client_disconnect") == 1
    assert value(registry, "sse_active_connections", endpoint="/events") == 0
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
