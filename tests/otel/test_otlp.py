"""The bridge's spans over the wire: OpenTelemetry's OTLP/HTTP exporter sends them to a small
receiver on 127.0.0.1, whose decoded ``ExportTraceServiceRequest`` carries the trace and
span IDs the toolkit's JSON log lines carry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from instrument import trace_span, track_provider
from instrument.adapters import otel as bridge
from tests.conftest import LogCapture

pytestmark = pytest.mark.no_internal_errors


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace endpoint: keeps every decoded export request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"

    def spans(self) -> list[Any]:
        return [span for request in self.received for resource in request.resource_spans
                for scope in resource.scope_spans for span in scope.spans]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # http.server calls do_<METHOD>
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.received.append(request)
        self.server.paths.append(self.path)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_exported_protobuf_carries_the_ids_of_the_json_logs(
        receiver: Receiver, logs: LogCapture) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=receiver.endpoint, timeout=5)))
    bridge.enable(provider, metrics=False)
    try:
        @track_provider("openai", "gpt-4o-mini")
        def call() -> dict[str, Any]:
            return {"usage": {"prompt_tokens": 10, "completion_tokens": 2}}

        with trace_span("handler"):
            call()
    finally:
        bridge.disable()
        provider.shutdown()
    assert set(receiver.paths) == {"/v1/traces"}
    exported = {span.name: span for span in receiver.spans()}
    assert set(exported) == {"handler", "chat gpt-4o-mini"}
    [line] = logs.events("provider_call")
    client = exported["chat gpt-4o-mini"]
    assert client.trace_id.hex() == line["trace_id"]
    assert client.span_id.hex() == line["span_id"]
    assert client.parent_span_id == exported["handler"].span_id
    [span_line] = logs.events("span")
    assert exported["handler"].span_id.hex() == span_line["span_id"]
