"""The Flask adapter under werkzeug's threaded server, driven over 127.0.0.1 by httpx."""

from __future__ import annotations

import contextvars
import gc
import importlib
import io
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, Response, request, send_file, stream_with_context
from prometheus_client import CollectorRegistry
from werkzeug.test import EnvironBuilder

from instrument import get_span_id, get_trace_id, trace_span, track_sse
from instrument.adapters.flask import instrument_app
from tests.adapters.apps import flask_app
from tests.adapters.apps.flask_app import ITEM_ROUTE, create_app, serve, serving
from tests.conftest import LogCapture
from tests.helpers import scrape, wait_until

W3C_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{W3C_ID}-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


def extended_app(tmp_file: Path | None = None, **kwargs: Any) -> Flask:
    """The standard app plus routes that stream the trace ID, a long body and a file."""
    app = create_app()

    def per_chunk() -> Iterator[str]:
        for _ in range(3):
            yield f"{get_trace_id()}\n"
            time.sleep(0.01)

    @app.get("/stream-trace")
    def stream_trace() -> Response:
        return Response(per_chunk(), mimetype="text/plain")

    @app.get("/stream-trace-ctx")
    def stream_trace_ctx() -> Response:
        def chunks() -> Iterator[str]:
            yield from per_chunk()
            yield request.path + "\n"  # the request context is there too

        return Response(stream_with_context(chunks()), mimetype="text/plain")

    @app.get("/long-body")
    def long_body() -> Response:
        def chunks() -> Iterator[bytes]:
            for _ in range(500):
                yield b"x" * 65536
                time.sleep(0.01)

        return Response(chunks(), mimetype="application/octet-stream")

    @app.get("/file")
    def file() -> Response:
        assert tmp_file is not None
        return send_file(tmp_file, mimetype="application/octet-stream")

    @app.get("/span-stream")
    def span_stream() -> Response:
        def chunks() -> Iterator[str]:
            with trace_span("streaming"):  # open across the yields
                for _ in range(3):
                    yield f"{get_trace_id()} {get_span_id()}\n"
                    time.sleep(0.01)

        return Response(chunks(), mimetype="text/plain")

    @app.get("/slow-handler")
    def slow_handler() -> str:
        time.sleep(0.5)
        return "done"

    @track_sse("tracked")
    def tracked_events() -> Iterator[str]:
        for i in range(200):
            yield f"data: {i}\n\n"
            time.sleep(0.05)

    @app.get("/tracked-sse")
    def tracked_sse() -> Response:
        return Response(tracked_events(), mimetype="text/event-stream")

    instrument_app(app, **kwargs)
    return app


@pytest.fixture
def url() -> Iterator[str]:
    with serve() as base:
        yield base


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def metric(base: str, name: str, **labels: str) -> float:
    return scrape(base + "/metrics").value(name, **labels) or 0.0


# -- trace in and out ----------------------------------------------------------------------

def test_given_trace_id_is_current_in_the_handler_and_echoed(url: str,
                                                             client: httpx.Client) -> None:
    r = client.get(url + "/items/7", headers={"X-Trace-ID": "req-abc.123"})
    assert r.status_code == 200
    assert r.json() == {"item_id": "7", "trace_id": "req-abc.123"}
    assert r.headers["x-trace-id"] == "req-abc.123"
    assert "traceparent" not in r.headers  # not W3C-shaped


def test_traceparent_only_continues_the_w3c_trace(url: str, client: httpx.Client) -> None:
    r = client.get(url + "/items/7", headers={"traceparent": TRACEPARENT})
    assert r.json()["trace_id"] == W3C_ID
    assert r.headers["x-trace-id"] == W3C_ID
    assert r.headers["traceparent"].split("-")[1] == W3C_ID


def test_missing_trace_id_starts_a_new_w3c_trace(url: str, client: httpx.Client) -> None:
    r = client.get(url + "/items/7")
    trace_id = r.headers["x-trace-id"]
    assert HEX32.fullmatch(trace_id)
    assert r.json()["trace_id"] == trace_id
    assert r.headers["traceparent"].split("-")[1] == trace_id


def test_malformed_trace_id_is_replaced_and_warned_about(url: str, client: httpx.Client,
                                                         logs: LogCapture) -> None:
    bad = "not valid!" + "x" * 200
    r = client.get(url + "/items/7", headers={"X-Trace-ID": bad})
    trace_id = r.headers["x-trace-id"]
    assert HEX32.fullmatch(trace_id)
    assert r.json()["trace_id"] == trace_id
    warning = logs.events("invalid_trace_id")[0]
    assert warning["trace_id"] == trace_id
    assert bad not in warning["rejected"]  # truncated


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404), ("GET", "/only-post", 405), ("GET", "/boom", 500)])
def test_error_responses_carry_the_trace_id(url: str, client: httpx.Client, method: str,
                                            path: str, status: int) -> None:
    r = client.request(method, url + path, headers={"X-Trace-ID": "err-trace"})
    assert r.status_code == status
    assert r.headers["x-trace-id"] == "err-trace"


def test_the_apps_own_trace_header_is_replaced_not_duplicated(client: httpx.Client) -> None:
    app = create_app()

    @app.get("/own-header")
    def own_header() -> Response:
        return Response("x", headers={"X-Trace-ID": "from-the-app"})

    instrument_app(app)
    with serving(app) as base:
        r = client.get(base + "/own-header", headers={"X-Trace-ID": "from-client"})
    assert r.headers.get_list("x-trace-id") == ["from-client"]


# -- routes and counts -------------------------------------------------------------------

def test_route_label_is_the_template_and_unmatched_paths_share_one_label(
        url: str, client: httpx.Client) -> None:
    for item in ("1", "2", "3"):
        client.get(url + f"/items/{item}")
    client.get(url + "/no/such/path")
    client.get(url + "/only-post")

    def counted() -> Any:  # the server records a request just after the client has its response
        page = scrape(url + "/metrics")
        return page if page.value("http_requests_total") == 5 else None

    page = wait_until(counted)
    assert page.value("http_requests_total", route="__unmatched__", status="404") == 1
    assert page.value("http_requests_total", route="__unmatched__", status="405") == 1
    routes = {labels["route"] for labels in page.labels_of("http_requests_total")}
    assert routes == {ITEM_ROUTE, "__unmatched__"}  # no raw path, no metrics route
    assert page.value("http_request_duration_seconds_count", route=ITEM_ROUTE) == 3
    assert page.value("http_requests_in_progress") == 0


def test_in_progress_counts_a_request_while_its_handler_runs(client: httpx.Client) -> None:
    with serving(extended_app()) as base:
        thread = threading.Thread(target=client.get, args=(base + "/slow-handler",))
        thread.start()
        wait_until(lambda: metric(base, "http_requests_in_progress",
                                  route="/slow-handler") == 1)
        thread.join(5)
        wait_until(lambda: metric(base, "http_requests_total", route="/slow-handler") == 1)
        assert metric(base, "http_requests_in_progress", route="/slow-handler") == 0


def test_flask_test_client_counts_every_request_and_leaks_no_trace(registry: Any) -> None:
    """The test client closes responses late (or never): nothing may stay bound meanwhile."""
    app = create_app()
    instrument_app(app)
    client = app.test_client()
    for i in range(3):
        r = client.get(f"/items/{i}", headers={"X-Trace-ID": f"tc-{i}"})
        assert r.json == {"item_id": str(i), "trace_id": f"tc-{i}"}
        assert r.headers["X-Trace-ID"] == f"tc-{i}"
        assert get_trace_id() is None
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": ITEM_ROUTE, "status": "200"}) == 3


def test_response_never_closed_by_the_server_is_still_counted(registry: Any) -> None:
    app = extended_app()
    environ = EnvironBuilder(path="/items/5").get_environ()
    body = app(environ, lambda status, headers, exc_info=None: None)
    assert get_trace_id() is None  # nothing stays bound while the server holds the body
    del body  # neither read nor closed: the garbage collector still records the request
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": ITEM_ROUTE, "status": "200"}) == 1


def test_unhandled_exception_is_a_counted_500_logged_once(url: str, client: httpx.Client,
                                                          logs: LogCapture) -> None:
    r = client.get(url + "/boom", headers={"X-Trace-ID": "boom-trace"})
    assert r.status_code == 500
    wait_until(lambda: logs.events("request"))
    assert metric(url, "http_errors_total", route="/boom", status="500") == 1
    assert metric(url, "http_requests_total", route="/boom", status="500") == 1
    with_traceback = [rec for rec in logs.records if "exception" in rec]
    assert len(with_traceback) == 1
    [record] = with_traceback
    assert record["event"] == "unhandled_exception"
    assert record["trace_id"] == "boom-trace"
    assert record["route"] == "/boom"
    assert "RuntimeError: boom" in record["exception"]["traceback"]


def test_exception_propagated_by_flask_is_still_counted(client: httpx.Client) -> None:
    app = create_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True  # werkzeug's server turns it into the 500
    instrument_app(app)
    with serving(app) as base:
        assert client.get(base + "/boom").status_code == 500
        wait_until(lambda: metric(base, "http_errors_total", route="/boom", status="500") == 1)
        assert metric(base, "http_requests_in_progress") == 0


# -- streamed bodies -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/stream-trace", "/stream-trace-ctx"])
def test_streamed_body_keeps_the_trace_id_in_every_chunk(client: httpx.Client,
                                                         path: str) -> None:
    with serving(extended_app()) as base:
        r = client.get(base + path, headers={"X-Trace-ID": "stream-trace"})
    lines = r.text.splitlines()
    assert lines[:3] == ["stream-trace"] * 3
    assert r.headers["x-trace-id"] == "stream-trace"
    if path.endswith("-ctx"):
        assert lines[3] == path


def test_a_span_held_open_across_the_yields_of_a_body(client: httpx.Client) -> None:
    """Each body step runs in the request's one context, so the span's token stays valid."""
    with serving(extended_app()) as base:
        r = client.get(base + "/span-stream", headers={"X-Trace-ID": "span-trace"})
        lines = {tuple(line.split()) for line in r.text.splitlines()}
        [(trace_id, span_id)] = lines
        assert trace_id == "span-trace" and span_id != "None"
        wait_until(lambda: metric(base, "span_duration_seconds_count", span="streaming") == 1)
        assert metric(base, "instrument_internal_errors_total") == 0


def test_streamed_body_read_from_another_context_rebinds_the_trace() -> None:
    """A server that reads the body outside the app call's context still sees the trace."""
    app = extended_app()
    environ = EnvironBuilder(path="/stream-trace", headers=[("X-Trace-ID", "elsewhere")]
                             ).get_environ()
    started: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append(status)

    body = contextvars.Context().run(app, environ, start_response)
    chunks: list[bytes] = []

    def read() -> None:  # a fresh thread: an empty context
        chunks.extend(body)
        body.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(5)
    assert started == ["200 OK"]
    assert b"".join(chunks).decode().splitlines() == ["elsewhere"] * 3
    assert get_trace_id() is None


def test_duration_runs_to_the_end_of_a_slow_body(url: str, client: httpx.Client) -> None:
    with client.stream("GET", url + "/slow-body") as r:
        headers_at = time.perf_counter()
        body = r.read()
        ended_at = time.perf_counter()
    assert body.count(b"chunk") == 3
    assert ended_at - headers_at >= 0.35  # the headers came first, the body later
    wait_until(lambda: metric(url, "http_request_duration_seconds_count", route="/slow-body"))
    assert metric(url, "http_request_duration_seconds_sum", route="/slow-body") >= 0.5


def test_call_on_close_work_is_outside_the_duration_but_inside_the_trace(
        url: str, client: httpx.Client) -> None:
    flask_app.BACKGROUND_TRACE_IDS.clear()
    r = client.get(url + "/background", headers={"X-Trace-ID": "bg-trace"})
    assert r.text == "ok"
    wait_until(lambda: flask_app.BACKGROUND_TRACE_IDS == ["bg-trace"])
    assert metric(url, "http_request_duration_seconds_count", route="/background") == 1
    assert metric(url, "http_request_duration_seconds_sum", route="/background") < 0.5


def test_sse_read_to_the_end_goes_to_the_sse_family(url: str, client: httpx.Client) -> None:
    r = client.get(url + "/sse")
    assert r.text.count("data: ") == 5
    assert r.headers["x-trace-id"]
    wait_until(lambda: metric(url, "sse_streams_closed_total", endpoint="/sse",
                              outcome="completed") == 1)
    page = scrape(url + "/metrics")
    assert page.value("sse_events_total", endpoint="/sse") == 5
    assert page.value("http_requests_total", route="/sse", status="200") == 1
    assert page.value("http_request_duration_seconds_count", route="/sse") is None


def test_sse_abandoned_half_way_is_a_client_disconnect(url: str, client: httpx.Client) -> None:
    with client.stream("GET", url + "/sse-long") as r:
        assert r.headers["x-trace-id"]
        lines = r.iter_lines()
        for line in lines:
            if line == "data: 3":
                break
    wait_until(lambda: metric(url, "sse_streams_closed_total", endpoint="/sse-long",
                              outcome="client_disconnect") == 1)
    page = scrape(url + "/metrics")
    assert page.value("sse_active_connections", endpoint="/sse-long") == 0
    assert page.value("http_requests_in_progress") == 0
    assert page.value("http_requests_total", route="/sse-long") == 1


def test_track_sse_stream_is_told_the_client_left(client: httpx.Client) -> None:
    """A ``@track_sse`` body measures itself; the adapter opens no second stream for it."""
    with serving(extended_app()) as base:
        with client.stream("GET", base + "/tracked-sse") as r:
            for line in r.iter_lines():
                if line == "data: 2":
                    break
        wait_until(lambda: metric(base, "sse_streams_closed_total", endpoint="tracked",
                                  outcome="client_disconnect") == 1)
        page = scrape(base + "/metrics")
        assert page.value("sse_active_connections", endpoint="tracked") == 0
        assert page.value("sse_connections_total", endpoint="/tracked-sse") is None


def test_plain_body_abandoned_half_way_counts_499(client: httpx.Client) -> None:
    with serving(extended_app()) as base:
        with client.stream("GET", base + "/long-body") as r:
            next(r.iter_bytes())
        wait_until(lambda: metric(base, "http_requests_total", route="/long-body",
                                  status="499") == 1)
        assert metric(base, "http_errors_total", route="/long-body") == 0
        assert metric(base, "http_requests_in_progress") == 0


def test_send_file_still_works_and_counts_its_bytes(tmp_path: Path,
                                                    client: httpx.Client) -> None:
    data = bytes(range(256)) * 1000
    (tmp_path / "blob.bin").write_bytes(data)
    with serving(extended_app(tmp_path / "blob.bin")) as base:
        r = client.get(base + "/file")
        assert r.content == data
        assert r.headers["x-trace-id"]


def test_a_servers_file_wrapper_goes_back_to_it_for_sendfile(tmp_path: Path,
                                                           registry: Any, logs: LogCapture) -> None:
    """gunicorn (like mod_wsgi) sends a file with sendfile() only if it gets its own wrapper
    back; the request still ends, counted with its bytes, when the server closes it."""
    from gunicorn.http.wsgi import FileWrapper

    data = bytes(range(256)) * 100
    (tmp_path / "blob.bin").write_bytes(data)
    app = extended_app(tmp_path / "blob.bin")
    instrument_app(app, access_log=True)
    environ = EnvironBuilder(path="/file", headers=[("X-Trace-ID", "file-trace")]).get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body = app(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
    assert type(body) is FileWrapper  # what gunicorn's worker checks before sendfile()
    assert ("X-Trace-ID", "file-trace") in started[0][1]
    assert b"".join(body) == data  # (sendfile reads body.filelike instead)
    assert registry.get_sample_value("http_requests_in_progress",
                                     {"method": "GET", "route": "/file"}) == 1
    body.close()
    assert body.filelike.closed
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "/file", "status": "200"}) == 1
    assert registry.get_sample_value("http_requests_in_progress",
                                     {"method": "GET", "route": "/file"}) == 0
    [line] = logs.events("request")
    assert line["bytes"] == len(data) and line["trace_id"] == "file-trace"
    assert get_trace_id() is None


class _ServerFileWrapper:
    """A server's file wrapper whose close is a method (waitress's is), not an attribute."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike, self.blksize = filelike, blksize

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.filelike.read(self.blksize), b"")

    def close(self) -> None:
        self.filelike.close()


def test_a_file_wrapper_with_a_close_method_is_freed_without_the_gc(registry: Any) -> None:
    app = Flask(__name__)

    @app.get("/odd")
    def odd() -> Response:
        wrapper = request.environ["wsgi.file_wrapper"](io.BytesIO(b"abc"))
        # a Content-Length no int() can read: the request is still served and counted
        return Response(wrapper, headers={"Content-Length": "\u00b2"}, direct_passthrough=True)

    instrument_app(app, access_log=False)
    environ = EnvironBuilder(path="/odd").get_environ()
    environ["wsgi.file_wrapper"] = _ServerFileWrapper
    gc.disable()
    try:
        body = app(environ, lambda status, headers, exc_info=None: None)
        assert type(body) is _ServerFileWrapper
        assert b"".join(body) == b"abc"
        body.close()
        freed = weakref.ref(body)
        del body
        assert freed() is None  # no reference cycle left behind
    finally:
        gc.enable()
    assert registry.get_sample_value(
        "http_requests_total", {"method": "GET", "route": "/odd", "status": "200"}) == 1


# -- access log ----------------------------------------------------------------------------

def test_access_log_line_is_json_with_the_requests_fields(url: str, client: httpx.Client,
                                                          logs: LogCapture) -> None:
    client.get(url + "/items/9?x=1", headers={"X-Trace-ID": "log-trace"})
    [line] = wait_until(lambda: logs.events("request"))
    assert line["trace_id"] == "log-trace"
    assert line["level"] == "INFO"
    assert (line["method"], line["route"], line["path"], line["status"]) == (
        "GET", ITEM_ROUTE, "/items/9", 200)
    assert line["bytes"] > 0 and line["latency_ms"] >= 0
    assert line["client"].startswith("127.0.0.1:")


def test_access_log_off_logs_no_request_line(client: httpx.Client, logs: LogCapture) -> None:
    with serve(access_log=False) as base:
        client.get(base + "/items/1")
        wait_until(lambda: metric(base, "http_requests_total", route=ITEM_ROUTE) == 1)
    assert logs.events("request") == []


# -- metrics routes, exclusions, set-up ----------------------------------------------------

def test_metrics_routes_are_served_and_not_counted(url: str, client: httpx.Client) -> None:
    client.get(url + "/items/1", headers={"X-Trace-ID": W3C_ID})
    wait_until(lambda: metric(url, "http_requests_total", route=ITEM_ROUTE) == 1)
    health = client.get(url + "/metrics/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    summary = client.get(url + "/metrics/summary").json()
    assert ITEM_ROUTE in str(summary)
    om = client.get(url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert f'trace_id="{W3C_ID}"' in om.text  # the exemplar links the latency to the trace
    assert health.headers["x-trace-id"]  # traced, not measured
    page = scrape(url + "/metrics")
    assert {labels["route"] for labels in page.labels_of("http_requests_total")} == {ITEM_ROUTE}
    assert page.value("trace_requests_total") == 1  # scrapes start no trace of their own


def test_custom_metrics_path_and_registry(client: httpx.Client) -> None:
    own = CollectorRegistry()
    with serve(metrics_path="/internal/metrics", registry=own) as base:
        client.get(base + "/items/1")
        wait_until(lambda: own.get_sample_value(
            "http_requests_total", {"method": "GET", "route": ITEM_ROUTE, "status": "200"}))
        page = scrape(base + "/internal/metrics")
        assert page.value("http_requests_total", route=ITEM_ROUTE) == 1
        assert client.get(base + "/metrics").status_code == 404  # now an ordinary unmatched path


def test_excluded_path_is_not_measured_but_keeps_its_trace(client: httpx.Client,
                                                           logs: LogCapture) -> None:
    with serve(exclude_paths=["/trace", "/sse*"]) as base:
        r = client.get(base + "/trace", headers={"X-Trace-ID": "excluded"})
        sse = client.get(base + "/sse")  # excluded as a prefix
        client.get(base + "/items/1")
        wait_until(lambda: logs.events("request"))
        assert r.text == "excluded" and r.headers["x-trace-id"] == "excluded"
        assert sse.text.count("data:") == 5 and sse.headers["x-trace-id"]
        page = scrape(base + "/metrics")
        assert page.value("http_requests_total", route="/trace") is None
        assert page.value("sse_connections_total") is None
        assert page.value("http_requests_total", route=ITEM_ROUTE) == 1
    assert [line["path"] for line in logs.events("request")] == ["/items/1"]


def test_instrument_app_twice_and_two_apps_in_one_process(client: httpx.Client) -> None:
    first, second = create_app(), create_app()
    instrument_app(first)
    wsgi_app, request_class, log_exception = (first.wsgi_app, first.request_class,
                                              first.log_exception)
    assert instrument_app(first) is first
    assert (first.wsgi_app, first.request_class, first.log_exception) == (
        wsgi_app, request_class, log_exception)
    instrument_app(second)
    with serving(first) as one, serving(second) as two:
        client.get(one + "/items/1")
        client.get(two + "/items/2")
        wait_until(lambda: metric(one, "http_requests_total", route=ITEM_ROUTE) == 2)
        assert metric(two, "http_requests_total", route=ITEM_ROUTE) == 2


def test_missing_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)  # what an absent package looks like
    monkeypatch.delitem(sys.modules, "instrument.adapters.flask")
    with pytest.raises(ImportError, match=re.escape("pip install 'llm-instrument[flask]'")):
        importlib.import_module("instrument.adapters.flask")


def test_gunicorn_child_exit_without_a_multiprocess_dir_does_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from instrument.adapters.flask import gunicorn_child_exit

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)

    class Worker:
        pid = 12345

    gunicorn_child_exit(None, Worker())  # no directory to clean: no error
