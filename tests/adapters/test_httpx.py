"""The httpx adapter against a real upstream on 127.0.0.1: headers out, client metrics in."""

from __future__ import annotations

import gc
import importlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import instrument.adapters.httpx as adapter
from instrument import get_trace_id, trace_span
from instrument._propagation import parse_traceparent
from instrument.adapters.httpx import (
    AsyncInstrumentedTransport,
    InstrumentedTransport,
    instrument_client,
)
from tests.helpers import free_port, value

SLOW_CHUNKS = [b"chunk-0\n", b"chunk-1\n", b"chunk-2\n"]
SLOW_GAP = 0.2  # seconds before each chunk: a full read takes >= 0.6 s
BODY = b"hello from upstream \xe2\x9c\x93"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        try:
            if self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                for chunk in SLOW_CHUNKS:
                    time.sleep(SLOW_GAP)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                return
            status = 404 if self.path == "/missing" else 200
            body = b"nope" if status == 404 else BODY
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client closed the stream early
            self.close_connection = True

    do_DELETE = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: list[tuple[str, dict[str, str]]]


class Upstream:
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.host = f"127.0.0.1:{server.server_address[1]}"
        self.url = f"http://{self.host}"

    @property
    def received(self) -> list[tuple[str, dict[str, str]]]:
        return self.server.received

    def headers(self, path: str) -> dict[str, str]:
        """The headers of the last request received for ``path``."""
        return [h for p, h in self.received if p == path][-1]


@pytest.fixture(scope="module")
def _server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def upstream(_server: _Server) -> Upstream:
    _server.received.clear()
    return Upstream(_server)


def count(registry: CollectorRegistry, host: str, status: str, method: str = "GET") -> float:
    return value(registry, "http_client_requests_total", host=host, method=method, status=status)


def duration(registry: CollectorRegistry, host: str, suffix: str = "count") -> float:
    return value(registry, f"http_client_request_duration_seconds_{suffix}", host=host,
                 method="GET")


def assert_trace_headers(headers: Any, span: Any) -> None:
    assert headers["x-trace-id"] == span.trace_id
    assert parse_traceparent(headers["traceparent"]) == (span.trace_id, span.span_id)


# -- sync client against the real upstream ----------------------------------------------------

def test_sync_client_sends_the_current_trace_as_x_trace_id_and_traceparent(
        upstream: Upstream) -> None:
    with instrument_client(httpx.Client()) as client, trace_span("call") as span:
        assert client.get(f"{upstream.url}/echo").status_code == 200
    assert_trace_headers(upstream.headers("/echo"), span)


def test_without_a_trace_no_headers_are_sent_and_no_trace_is_started(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    with instrument_client(httpx.Client()) as client:
        client.get(f"{upstream.url}/echo")
    assert get_trace_id() is None
    sent = upstream.headers("/echo")
    assert "x-trace-id" not in sent and "traceparent" not in sent
    assert value(registry, "trace_requests_total") == 0
    assert count(registry, upstream.host, "200") == 1  # still measured


def test_client_metrics_are_labelled_by_host_with_port_method_and_status(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    with instrument_client(httpx.Client()) as client:
        client.get(f"{upstream.url}/echo")
        client.get(f"{upstream.url}/missing")
        client.delete(f"{upstream.url}/missing")
    assert count(registry, upstream.host, "200") == 1
    assert count(registry, upstream.host, "404") == 1
    assert count(registry, upstream.host, "404", method="DELETE") == 1
    assert duration(registry, upstream.host) == 2


def test_a_slow_body_is_timed_to_its_end_and_passes_through_unchanged(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    with instrument_client(httpx.Client()) as client:
        response = client.get(f"{upstream.url}/slow")
    assert response.content == b"".join(SLOW_CHUNKS)
    assert duration(registry, upstream.host) == 1
    assert duration(registry, upstream.host, "sum") >= 0.5


def test_a_stream_is_recorded_when_closed_not_at_the_headers_and_only_once(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    with instrument_client(httpx.Client()) as client:
        with client.stream("GET", f"{upstream.url}/slow") as response:
            assert response.status_code == 200
            assert count(registry, upstream.host, "200") == 0  # headers are in, body is not
            for chunk in response.iter_raw():
                assert chunk == SLOW_CHUNKS[0]
                break  # abandon the body half-way
        response.close()
        gc.collect()
    assert count(registry, upstream.host, "200") == 1
    assert duration(registry, upstream.host) == 1


def test_streamed_chunks_pass_through_unchanged(upstream: Upstream) -> None:
    with instrument_client(httpx.Client()) as client:
        with client.stream("GET", f"{upstream.url}/slow") as response:
            assert list(response.iter_raw()) == SLOW_CHUNKS


class RecordingTransport(httpx.HTTPTransport):
    """A user's own transport that remembers the exception it raised."""

    raised: BaseException | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except BaseException as exc:
            self.raised = exc
            raise


def test_connection_refused_is_counted_by_exception_type_and_reraised_untouched(
        registry: CollectorRegistry) -> None:
    port = free_port()
    transport = RecordingTransport()
    with instrument_client(httpx.Client(transport=transport)) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            client.get(f"http://127.0.0.1:{port}/")
    assert caught.value is transport.raised
    assert count(registry, f"127.0.0.1:{port}", "ConnectError") == 1
    assert duration(registry, f"127.0.0.1:{port}") == 1


def test_wraps_a_user_transport_and_every_mount(upstream: Upstream,
                                                registry: CollectorRegistry) -> None:
    mounted = RecordingTransport()
    client = httpx.Client(mounts={"http://127.0.0.1": mounted, "all://unused.invalid": None})
    with instrument_client(client), trace_span("mounted") as span:
        client.get(f"{upstream.url}/echo")
    assert isinstance(client._transport, InstrumentedTransport)
    wrapped = list(client._mounts.values())
    assert None in wrapped
    assert any(isinstance(t, InstrumentedTransport) and t.transport is mounted for t in wrapped)
    assert_trace_headers(upstream.headers("/echo"), span)
    assert count(registry, upstream.host, "200") == 1


def test_instrumenting_twice_wraps_once_and_counts_once(upstream: Upstream,
                                                        registry: CollectorRegistry) -> None:
    client = instrument_client(instrument_client(httpx.Client()))
    assert not isinstance(client._transport.transport, InstrumentedTransport)  # type: ignore[attr-defined]
    with client:
        client.get(f"{upstream.url}/echo")
    assert count(registry, upstream.host, "200") == 1


def test_registry_argument_records_there(upstream: Upstream,
                                         registry: CollectorRegistry) -> None:
    other = CollectorRegistry()
    with instrument_client(httpx.Client(), registry=other) as client:
        client.get(f"{upstream.url}/echo")
    assert count(other, upstream.host, "200") == 1
    assert count(registry, upstream.host, "200") == 0


def test_the_exemplar_carries_the_requests_trace_even_when_closed_outside_it(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    with instrument_client(httpx.Client()) as client:
        with trace_span("opened") as span:
            response = client.send(client.build_request("GET", f"{upstream.url}/echo"),
                                   stream=True)
        response.read()
    exemplars = [s.exemplar.labels for m in registry.collect() for s in m.samples
                 if s.name == "http_client_request_duration_seconds_bucket" and s.exemplar]
    assert exemplars == [{"trace_id": span.trace_id}]


# -- composition with httpx.MockTransport -------------------------------------------------------

def test_mock_transport_sees_the_injected_headers_and_its_response_passes_through(
        registry: CollectorRegistry) -> None:
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(201, json={"ok": True})

    with instrument_client(httpx.Client(transport=httpx.MockTransport(handler))) as client:
        with trace_span("mocked") as span:
            response = client.post("https://api.example.com/v1/items", json={})
    assert response.status_code == 201 and response.json() == {"ok": True}
    assert_trace_headers(seen[0], span)
    assert count(registry, "api.example.com", "201", method="POST") == 1


def test_a_body_failing_half_way_is_counted_by_exception_type(
        registry: CollectorRegistry) -> None:
    boom = RuntimeError("upstream went away")

    def body() -> Iterator[bytes]:
        yield b"partial"
        raise boom

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body()))
    with instrument_client(httpx.Client(transport=transport)) as client:
        with pytest.raises(RuntimeError) as caught:
            client.get("http://mock.test/")
    assert caught.value is boom
    assert count(registry, "mock.test", "RuntimeError") == 1
    assert count(registry, "mock.test", "200") == 0


def test_a_response_dropped_without_closing_is_recorded_once_at_garbage_collection(
        registry: CollectorRegistry) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=iter([b"a", b"b"])))
    with instrument_client(httpx.Client(transport=transport)) as client:
        response = client.send(client.build_request("GET", "http://mock.test/"), stream=True)
        assert count(registry, "mock.test", "200") == 0
        del response
        gc.collect()
        assert count(registry, "mock.test", "200") == 1


def test_bookkeeping_failure_never_breaks_the_request(
        upstream: Upstream, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("instrument bug")

    monkeypatch.setattr(adapter, "ClientRequest", broken)
    with instrument_client(httpx.Client()) as client:
        assert client.get(f"{upstream.url}/echo").content == BODY
    assert value(registry, "instrument_internal_errors_total", where="httpx") == 1


# -- providers ---------------------------------------------------------------------------------

class FakeProviderCall:
    def __init__(self, provider: str, request: httpx.Request) -> None:
        self.provider = provider
        self.url = str(request.url)
        self.events: list[Any] = []

    def first_chunk(self) -> None:
        self.events.append("first")

    def chunk(self, data: bytes) -> None:
        self.events.append(data)

    def finish(self, status: int | None, exc: BaseException | None, body: bytes | None,
               abandoned: bool = False) -> None:
        self.events.append(("finish", status, exc, body))
        if abandoned:
            self.events.append("abandoned")


@pytest.fixture
def provider_calls(monkeypatch: pytest.MonkeyPatch) -> list[FakeProviderCall]:
    calls: list[FakeProviderCall] = []

    def hook(provider: str, request: httpx.Request, metrics: Any) -> FakeProviderCall:
        calls.append(FakeProviderCall(provider, request))
        return calls[-1]

    monkeypatch.setattr(adapter, "_provider_call", hook)
    return calls


def test_calls_to_a_known_provider_host_are_reported_chunk_by_chunk(
        upstream: Upstream, provider_calls: list[FakeProviderCall]) -> None:
    with instrument_client(httpx.Client(), providers={"127.0.0.1": "local"}) as client:
        client.get(f"{upstream.url}/slow")
    [call] = provider_calls
    assert call.provider == "local" and call.url == f"{upstream.url}/slow"
    assert call.events == ["first", *SLOW_CHUNKS, ("finish", 200, None, None)]


def test_a_provider_body_already_read_by_the_transport_is_given_at_finish(
        provider_calls: list[FakeProviderCall]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b'{"id": 1}'))
    client = httpx.Client(transport=transport)
    with instrument_client(client, providers={"API.OpenAI.com": "openai"}):
        client.get("https://api.openai.com/v1/models")
        client.get("https://elsewhere.test/")
    [call] = provider_calls
    assert call.provider == "openai"
    assert call.events == [("finish", 200, None, b'{"id": 1}')]


def test_a_failed_provider_call_reports_the_exception(
        provider_calls: list[FakeProviderCall]) -> None:
    port = free_port()
    with instrument_client(httpx.Client(), providers={"127.0.0.1": "local"}) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            client.get(f"http://127.0.0.1:{port}/")
    assert provider_calls[0].events == [("finish", None, caught.value, None)]


def test_raw_provider_calls_count_as_provider_calls_with_model_usage_and_cost(
        registry: CollectorRegistry) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 500,
             "prompt_tokens_details": {"cached_tokens": 400}}
    stream_body = (b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
                   b'data: {"choices": [], "usage": ' + json.dumps(usage).encode() + b'}\n\n'
                   b"data: [DONE]\n\n")

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  stream=httpx.ByteStream(stream_body))
        if request.url.path.endswith("/fail"):
            return httpx.Response(429, json={"error": "slow down"})
        return httpx.Response(200, json={"choices": [], "usage": usage})

    client = instrument_client(httpx.Client(transport=httpx.MockTransport(handler)),
                               providers={"api.openai.com": "openai"})
    url = "https://api.openai.com/v1/chat/completions"
    client.post(url, json={"model": "gpt-4o", "messages": []})
    with client.stream("POST", url, json={"model": "gpt-4o", "stream": True}) as response:
        assert b"".join(response.iter_bytes()) == stream_body
    client.post(url + "/fail", json={"model": "gpt-4o"})
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_requests_total", status="ok", **labels) == 2
    assert value(registry, "provider_errors_total", error_type="http_429", **labels) == 1
    assert value(registry, "provider_tokens_total", type="cached_input", **labels) == 800
    # gpt-4o: (600 * 2.5 + 400 * 1.25 + 500 * 10) / 1e6 = 0.007 per call, two calls
    assert value(registry, "token_cost_usd_total", **labels) == pytest.approx(0.014)
    assert value(registry, "provider_time_to_first_token_seconds_count", **labels) == 1
    assert value(registry, "provider_inflight_requests", provider="openai") == 0


def _sse_client(body: bytes) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        chunks = [line + b"\n\n" for line in body.split(b"\n\n") if line]
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=_Chunks(chunks))

    return instrument_client(httpx.Client(transport=httpx.MockTransport(handler)),
                             providers={"api.openai.com": "openai"})


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


SSE = (b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
       b'data: {"choices": [{"delta": {"content": "b"}}]}\n\n'
       b'data: {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}\n\n'
       b"data: [DONE]\n\n")


def test_a_raw_stream_abandoned_then_closed_is_cancelled_as_everywhere(
        registry: CollectorRegistry) -> None:
    client = _sse_client(SSE)
    url = "https://api.openai.com/v1/chat/completions"
    with client.stream("POST", url, json={"model": "gpt-4o", "stream": True}) as response:
        next(response.iter_raw())
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_requests_total", status="cancelled", **labels) == 1
    assert value(registry, "provider_requests_total", status="ok", **labels) == 0
    assert value(registry, "provider_unpriced_requests_total", reason="cancelled",
                 **labels) == 1
    assert count(registry, "api.openai.com", "200", method="POST") == 1  # the HTTP status


def test_a_provider_call_observed_already_is_not_counted_again(
        registry: CollectorRegistry) -> None:
    from instrument import track_provider

    client = _sse_client(SSE)
    seen: list[httpx.Headers] = []

    @track_provider("openai", "gpt-4o")
    def call() -> bytes:
        with client.stream("POST", "https://api.openai.com/v1/chat/completions",
                           json={"model": "gpt-4o", "stream": True}) as response:
            seen.append(response.request.headers)
            return response.read()

    with trace_span("handler") as span:
        call()
    assert seen[0]["x-trace-id"] == span.trace_id  # headers still go out
    assert count(registry, "api.openai.com", "200", method="POST") == 1  # client metrics too
    assert value(registry, "provider_requests_total", provider="openai", model="gpt-4o",
                 status="ok") == 1


@pytest.mark.parametrize("providers, error", [
    (["api.openai.com"], TypeError),
    ({"api.openai.com": 1}, TypeError),
    ({1: "openai"}, TypeError),
    ({"https://api.openai.com": "openai"}, ValueError),
    ({"api.openai.com:443": "openai"}, ValueError),
    ({"": "openai"}, ValueError),
    ({"api.openai.com": ""}, ValueError),
])
def test_bad_providers_are_rejected_at_configuration_time(providers: Any,
                                                          error: type[Exception]) -> None:
    client = httpx.Client()
    transport = client._transport
    with pytest.raises(error):
        instrument_client(client, providers=providers)
    assert client._transport is transport  # the client was left untouched
    with pytest.raises(error):
        InstrumentedTransport(transport, providers=providers)
    client.close()


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # what an uninstalled package looks like
    monkeypatch.delitem(sys.modules, "instrument.adapters.httpx")
    with pytest.raises(ImportError, match=r"pip install 'llm-instrument\[httpx\]'"):
        importlib.import_module("instrument.adapters.httpx")


def test_only_httpx_clients_are_accepted() -> None:
    with pytest.raises(TypeError):
        instrument_client(object())  # type: ignore[type-var]


# -- async client, on asyncio and trio --------------------------------------------------------

@pytest.mark.anyio
async def test_async_client_sends_trace_headers_and_times_the_slow_body_to_its_end(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    async with instrument_client(httpx.AsyncClient()) as client:
        async with trace_span("call") as span:
            response = await client.get(f"{upstream.url}/slow")
    assert response.content == b"".join(SLOW_CHUNKS)
    assert_trace_headers(upstream.headers("/slow"), span)
    assert count(registry, upstream.host, "200") == 1
    assert duration(registry, upstream.host, "sum") >= 0.5


@pytest.mark.anyio
async def test_async_client_without_a_trace_sends_no_trace_headers(upstream: Upstream) -> None:
    async with instrument_client(httpx.AsyncClient()) as client:
        await client.get(f"{upstream.url}/echo")
    assert "x-trace-id" not in upstream.headers("/echo")
    assert "traceparent" not in upstream.headers("/echo")


@pytest.mark.anyio
async def test_async_stream_closed_early_is_recorded_once(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    async with instrument_client(httpx.AsyncClient()) as client:
        async with client.stream("GET", f"{upstream.url}/slow") as response:
            assert response.status_code == 200
            assert count(registry, upstream.host, "200") == 0
            # Left unread: abandoning httpx's own async generators half-way makes trio warn.
        await response.aclose()
    assert count(registry, upstream.host, "200") == 1
    assert duration(registry, upstream.host) == 1


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    raised: BaseException | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except BaseException as exc:
            self.raised = exc
            raise


@pytest.mark.anyio
async def test_async_connection_refused_is_counted_and_reraised_untouched(
        registry: CollectorRegistry) -> None:
    port = free_port()
    transport = AsyncRecordingTransport()
    async with instrument_client(httpx.AsyncClient(transport=transport)) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://127.0.0.1:{port}/")
    assert caught.value is transport.raised
    assert count(registry, f"127.0.0.1:{port}", "ConnectError") == 1


@pytest.mark.anyio
async def test_async_mock_transport_sees_headers_and_instrumenting_twice_counts_once(
        registry: CollectorRegistry) -> None:
    seen: list[httpx.Headers] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, content=_chunks())

    async def _chunks() -> AsyncIterator[bytes]:
        yield b"one "
        yield b"two"

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    instrument_client(instrument_client(client))
    assert isinstance(client._transport, AsyncInstrumentedTransport)
    assert isinstance(client._transport.transport, httpx.MockTransport)
    async with client, trace_span("mocked") as span:
        response = await client.get("http://mock.test/")
    assert response.content == b"one two"
    assert_trace_headers(seen[0], span)
    assert count(registry, "mock.test", "200") == 1


# -- httpx2 (the package the current OpenAI and Anthropic SDKs use) ---------------------------

def test_an_httpx2_client_gets_the_same_headers_and_metrics(upstream: Upstream,
                                                             registry: CollectorRegistry) -> None:
    httpx2 = pytest.importorskip("httpx2")
    with instrument_client(httpx2.Client()) as client, trace_span("call") as span:
        assert client.get(f"{upstream.url}/echo").content == BODY
        with client.stream("GET", f"{upstream.url}/slow") as response:
            assert list(response.iter_raw()) == SLOW_CHUNKS
    assert_trace_headers(upstream.headers("/echo"), span)
    assert count(registry, upstream.host, "200") == 2
    assert isinstance(client._transport, adapter.Httpx2InstrumentedTransport)
    assert isinstance(client._transport, httpx2.BaseTransport)


@pytest.mark.anyio
async def test_an_async_httpx2_client_gets_the_same_headers_and_metrics(
        upstream: Upstream, registry: CollectorRegistry) -> None:
    httpx2 = pytest.importorskip("httpx2")
    async with instrument_client(httpx2.AsyncClient()) as client:
        async with trace_span("call") as span:
            assert (await client.get(f"{upstream.url}/echo")).content == BODY
    assert_trace_headers(upstream.headers("/echo"), span)
    assert count(registry, upstream.host, "200") == 1


def test_httpx2_mock_transport_and_provider_calls(registry: CollectorRegistry) -> None:
    httpx2 = pytest.importorskip("httpx2")

    def handler(request: Any) -> Any:
        return httpx2.Response(200, json={"usage": {"prompt_tokens": 10,
                                                    "completion_tokens": 2}})

    client = instrument_client(httpx2.Client(transport=httpx2.MockTransport(handler)),
                               providers={"api.openai.com": "openai"})
    client.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o"})
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_requests_total", status="ok", **labels) == 1
    assert value(registry, "provider_tokens_total", type="input", **labels) == 10
