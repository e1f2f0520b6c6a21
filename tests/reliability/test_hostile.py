"""Hostile input: property-based tests (hypothesis) of every parser of outside input, hostile
requests to the real servers over raw sockets, and 100,000 requests and calls with random
paths and model names against the cardinality limits.

Parsers: ``X-Trace-ID`` validation, ``traceparent`` and ``tracestate``, the header containers
the request gate reads (plain dicts and pairs, ASGI's raw pairs, Starlette's ``Headers``, a
WSGI environ, werkzeug's headers, aiohttp's ``CIMultiDict``), the response headers it
merges, price documents and files, and the arguments of ``configure``,
``configure_logging`` and each ``instrument_app``. Properties: no exception escapes but
the documented configuration errors (``ValueError``/``TypeError`` with a message); an
accepted ID obeys the documented charset and length; every log line is exactly one JSON
object. ``HYPOTHESIS_PROFILE=slow`` runs 10,000 examples per property (``conftest.py``)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from loguru import logger
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest
from starlette.datastructures import Headers as StarletteHeaders
from werkzeug.datastructures import EnvironHeaders
from werkzeug.datastructures import Headers as WerkzeugHeaders

import instrument
from instrument import _logging, _pricing, track_provider
from instrument._context import accept_trace_id, is_valid_trace_id
from instrument._gate import Gate, merge_headers, raw_headers
from instrument._http import ServerRequest
from instrument._propagation import (
    extract_asgi,
    extract_checked,
    extract_wsgi,
    parse_traceparent,
    parse_tracestate,
    read_tracestate,
)
from tests.conftest import LogCapture
from tests.helpers import Scrape, scrape, serve_asgi, wait_until

# the slow profile's 10,000 examples a property take minutes each
pytestmark = [pytest.mark.timeout(3600 if os.environ.get("HYPOTHESIS_PROFILE") == "slow"
                                  else 300)]

#: the documented charset and length of an accepted trace ID (docs/adapters.md)
ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# -- strategies ------------------------------------------------------------------------------

#: what breaks lines, JSON, terminals and encoders
NASTY = ["\n", "\r\n", "\r", '"', "'", "\\", "\x00", "\x1b[31m", "\x1b]0;title\x07",
         "\u2028", "\u2029", "\x85", "\ud800", "\udfff", "\ud83d", "\ufeff", "\x7f", "{", "}",
         "{0}", "%s", "<", "=", ";", ",", " ", "\t", "é", "\U0001f600", "/", "..", ":"]
#: every code point, lone surrogates included, and the nasty ones often
hostile_text = st.lists(st.one_of(st.text(st.characters(exclude_categories=()), max_size=8),
                                  st.sampled_from(NASTY)), max_size=12).map("".join)
id_like = st.one_of(st.text(st.sampled_from("Aa0._:-"), min_size=0, max_size=140),
                    st.text(st.sampled_from("0123456789abcdef"), min_size=32, max_size=32),
                    hostile_text)
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text,
                     st.binary(max_size=16), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                     st.just(object()), st.just(CollectorRegistry()))


@st.composite
def traceparents(draw: st.DrawFn) -> str:
    """Valid W3C traceparents, and each part mangled in turn."""
    hexes = st.text(st.sampled_from("0123456789abcdef"), min_size=1, max_size=34)
    version = draw(st.sampled_from(["00", "01", "ff", "0", "000", "AA", "cc"]) | hexes)
    trace = draw(st.one_of(hexes, st.just("0" * 32),
                           st.text(st.sampled_from("0123456789abcdef"), min_size=32,
                                   max_size=32)))
    parent = draw(st.one_of(hexes, st.just("0" * 16),
                            st.text(st.sampled_from("0123456789abcdef"), min_size=16,
                                    max_size=16)))
    flags = draw(st.sampled_from(["01", "00", "1", "zz"]) | hexes)
    tail = draw(st.sampled_from(["", "-", "-extra", "-\n"]) | hostile_text.map(lambda t: "-" + t))
    pad = draw(st.sampled_from(["", " ", "\t", "\n"]))
    return f"{pad}{version}-{trace}-{parent}-{flags}{tail}{pad}"


header_names = st.one_of(st.sampled_from(["X-Trace-ID", "x-trace-id", "X-TRACE-ID",
                                          "traceparent", "Traceparent", "tracestate",
                                          "Content-Type", "Authorization"]),
                         st.text(st.sampled_from("abcXYZ-_"), min_size=1, max_size=12))
header_values = st.one_of(id_like, traceparents(), hostile_text,
                          st.text(st.sampled_from("abc=,; "), max_size=600))
header_pairs = st.lists(st.tuples(header_names, header_values), max_size=8)


def latin1(text: str) -> bytes:
    """A value as it arrives on the wire: bytes (what cannot be latin-1 goes as UTF-8)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


# -- X-Trace-ID ------------------------------------------------------------------------------

@given(id_like)
def test_an_accepted_trace_id_obeys_the_charset_and_length(value: str) -> None:
    valid = is_valid_trace_id(value)
    assert valid == (ID.fullmatch(value) is not None)
    accepted = accept_trace_id(value)
    assert ID.fullmatch(accepted)
    assert (accepted == value) == valid


@given(anything)
def test_any_object_as_a_trace_id_gives_a_valid_one(value: Any) -> None:
    assert ID.fullmatch(accept_trace_id(value))
    with instrument.use_trace_id(value) as used:
        assert ID.fullmatch(used) and instrument.get_trace_id() == used


# -- traceparent / tracestate ------------------------------------------------------------------

@given(st.one_of(traceparents(), hostile_text))
def test_traceparent_is_accepted_only_when_valid(value: str) -> None:
    found = parse_traceparent(value)
    if found is not None:
        trace_id, parent = found
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != "0" * 32
        assert re.fullmatch(r"[0-9a-f]{16}", parent) and parent != "0" * 16
        assert trace_id in value and parent in value


@given(st.one_of(hostile_text, st.lists(st.tuples(st.text("abc@*", min_size=1, max_size=4),
                                                  hostile_text), max_size=40).map(
    lambda members: ",".join(f"{k}={v}" for k, v in members))))
def test_tracestate_is_passed_on_untouched_or_dropped(value: str) -> None:
    found = parse_tracestate(value)
    if found is not None:
        assert found == value and len(value) <= 512
        assert re.fullmatch(r"[\x20-\x7e]+", value)  # no CR/LF: it goes into other headers
        assert len([m for m in value.split(",") if m.strip()]) <= 32


# -- the header containers the gate reads ------------------------------------------------------

def containers(pairs: list[tuple[str, str]]) -> Iterator[tuple[str, Any, Callable[..., Any]]]:
    """The same headers as each framework hands them over, with the reader used for it (a
    value parsed off the wire never holds CR or LF: werkzeug refuses to build one)."""
    pairs = [(name, value.replace("\r", "").replace("\n", "")) for name, value in pairs]
    raw = [(name.lower().encode("latin-1"), latin1(value)) for name, value in pairs]
    environ = {"wsgi.version": (1, 0), "REQUEST_METHOD": "GET"}
    for name, value in raw:
        environ["HTTP_" + name.decode().upper().replace("-", "_")] = value.decode("latin-1")
    yield "asgi raw pairs", raw, extract_asgi
    yield "starlette Headers", StarletteHeaders(raw=raw), extract_checked
    yield "wsgi environ", environ, extract_wsgi
    yield "werkzeug EnvironHeaders", EnvironHeaders(environ), extract_checked
    yield "werkzeug Headers", WerkzeugHeaders(pairs), extract_checked
    yield "aiohttp CIMultiDict", CIMultiDict(pairs), extract_checked
    yield "dict", dict(pairs), extract_checked
    yield "str pairs", list(pairs), extract_checked


@given(header_pairs)
def test_every_header_container_gives_a_valid_trace_and_safe_response_headers(
        pairs: list[tuple[str, str]]) -> None:
    gate = Gate(metrics_path=None)
    for _kind, headers, extract in containers(pairs):
        request = ServerRequest("GET", "/x", headers, None, False, None, extract)
        assert ID.fullmatch(request.trace_id)
        assert request.span_id is None or re.fullmatch(r"[0-9a-f]{16}", request.span_id)
        if request.span_id is not None and request.tracestate is not None:
            assert parse_tracestate(request.tracestate) == request.tracestate
        for name, value in request.response_headers():
            assert re.fullmatch(r"[\x20-\x7e]+", value), (name, value)
        assert request.raw_response_headers()  # latin-1 by construction
        trace, back = gate.untimed(headers)
        assert ID.fullmatch(trace.trace_id)
        assert raw_headers(back)
        read_tracestate(headers)


@given(header_pairs)
def test_merged_response_headers_carry_one_trace(pairs: list[tuple[str, str]]) -> None:
    trace = [("X-Trace-ID", "abc"), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    merged, _sse = merge_headers(pairs, trace)
    assert [v for n, v in merged if n.lower() == "x-trace-id"] == ["abc"]
    assert [p for p in merged if p[0].lower() not in ("x-trace-id", "traceparent")] == \
        [p for p in pairs if p[0].lower() not in ("x-trace-id", "traceparent")]
    raw = [(n.lower().encode("latin-1"), latin1(v)) for n, v in pairs]
    merged_raw, _sse = merge_headers(raw, raw_headers(trace))
    assert [v for n, v in merged_raw if n == b"x-trace-id"] == [b"abc"]


# -- price documents ---------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile_text,
              st.integers(min_value=10**300, max_value=10**400)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.one_of(hostile_text, st.sampled_from(["openai/gpt-x", "input", "output", "models",
                                                 "unit", "as_of", "cached_input"])),
        inner, max_size=4), max_leaves=12)
price_documents = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["openai/a", "anthropic/b", "x", "a/", "/b"]),
                    st.dictionaries(st.sampled_from(["input", "output", "cached_input",
                                                     "cache_write", "oops"]),
                                    json_values, max_size=4), max_size=3),
    st.fixed_dictionaries({"models": json_values}, optional={"unit": json_values,
                                                             "as_of": json_values}))


def refused_with_a_message(error: BaseException) -> None:
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert str(error).strip(), repr(error)


@given(price_documents)
@example({"openai/x": {"input": 10**400, "output": 1}})  # too large for a float
def test_a_price_document_is_loaded_or_refused_with_a_message(doc: Any) -> None:
    table = _pricing.price_table()
    try:
        instrument.load_prices(doc)
    except Exception as exc:
        refused_with_a_message(exc)
        assert _pricing.price_table() is table  # unchanged
    finally:
        _pricing.reset_prices()
        _pricing.use_genai_prices(False)


@given(st.one_of(st.binary(max_size=200), price_documents.map(
    lambda doc: json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass"))))
@example(b'{"openai/x": {"input": 1' + b"0" * 400 + b', "output": 1}}')
@example(b'{"openai/x": {"input": 1' + b"0" * 5000 + b', "output": 1}}')  # past int's digits
def test_a_price_file_is_loaded_or_refused_with_a_message(tmp_path_factory: Any,
                                                          content: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("prices")) / "prices.json"
    path.write_bytes(content)
    table = _pricing.price_table()
    try:
        instrument.load_prices(path)
    except Exception as exc:
        refused_with_a_message(exc)
        assert "prices.json" in str(exc)  # names the file
        assert _pricing.price_table() is table
    finally:
        _pricing.reset_prices()
        _pricing.use_genai_prices(False)


# -- configuration arguments -----------------------------------------------------------------

@given(st.fixed_dictionaries({}, optional={"registry": anything, "namespace": anything,
                                           "max_label_values": anything}))
def test_configure_takes_its_arguments_or_refuses_them_with_a_message(kwargs: dict[str, Any]
                                                                      ) -> None:
    kwargs = {k: (CollectorRegistry() if isinstance(v, CollectorRegistry) else v)
              for k, v in kwargs.items()}
    try:
        instrument.configure(**kwargs)
    except Exception as exc:
        refused_with_a_message(exc)
    finally:
        instrument.configure(registry=CollectorRegistry())


@given(st.fixed_dictionaries({}, optional={
    "level": st.one_of(anything, st.sampled_from(["debug", "INFO", "warning", "TRACE", 0, 5,
                                                  -1, 50])),
    "json": anything, "intercept_stdlib": st.booleans(),
    "queue_size": st.one_of(anything, st.integers(-2, 50)),
    "sink": st.one_of(anything, st.just(io.StringIO()), st.just(print))}))
def test_configure_logging_takes_its_arguments_or_refuses_them_and_keeps_the_last_sink(
        kwargs: dict[str, Any]) -> None:
    """A refused call changes nothing: the sink configured before still gets every line, and
    no writer thread is left behind."""
    kept = LogCapture()
    instrument.configure_logging("INFO", sink=kept)
    threads = threading.active_count()
    try:
        instrument.configure_logging(**kwargs)
    except Exception as exc:
        refused_with_a_message(exc)
        assert threading.active_count() == threads
        logger.info("still here")
        assert kept.records[-1]["message"] == "still here"
    finally:
        instrument.configure_logging("INFO", sink=LogCapture())
        logger.remove()


app_arguments = st.fixed_dictionaries({}, optional={
    "metrics_path": st.one_of(anything, st.sampled_from(["/metrics", "/m/", "metrics", "/"])),
    "access_log": anything,
    "exclude_paths": st.one_of(anything, st.lists(st.one_of(st.sampled_from(["/a", "/b*", "c"]),
                                                            anything), max_size=3)),
    "registry": anything})


def _fastapi() -> Any:
    from fastapi import FastAPI

    from instrument.adapters.fastapi import instrument_app
    return instrument_app, FastAPI()


def _flask() -> Any:
    from flask import Flask

    from instrument.adapters.flask import instrument_app
    return instrument_app, Flask(__name__)


def _aiohttp() -> Any:
    from aiohttp import web

    from instrument.adapters.aiohttp import instrument_app
    return instrument_app, web.Application()


@pytest.mark.parametrize("make", [_fastapi, _flask, _aiohttp], ids=["fastapi", "flask",
                                                                     "aiohttp"])
@given(kwargs=app_arguments)
def test_instrument_app_takes_its_arguments_or_refuses_them_with_a_message(
        make: Callable[[], Any], kwargs: dict[str, Any]) -> None:
    instrument_app, app = make()
    try:
        instrument_app(app, **kwargs)
    except Exception as exc:
        refused_with_a_message(exc)


# -- log lines ---------------------------------------------------------------------------------

field_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                      hostile_text, st.binary(max_size=8)),
                            lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(hostile_text, inner, max_size=3)
                            | st.tuples(hostile_text, inner), max_leaves=10)


class HostileError(Exception):
    pass


@pytest.mark.parametrize("encoder", ["orjson", "stdlib", "text"])
@given(message=hostile_text, fields=st.dictionaries(hostile_text.filter(str.isidentifier)
                                                    | st.sampled_from(["api_key", "message",
                                                                       "level", "logger"]),
                                                    field_values, max_size=4),
       error=st.none() | hostile_text)
def test_every_log_line_is_exactly_one_json_object(encoder: str, message: str,
                                                   fields: dict[str, Any],
                                                   error: str | None) -> None:
    """Newlines, quotes, NULs, lone surrogates, ANSI escapes, U+2028: one record, one line
    (and in JSON, one object whose message is the record's, redacted)."""
    logs = LogCapture()
    dumps = _logging._dumps_stdlib if encoder == "stdlib" else _logging.dumps
    previous, _logging.dumps = _logging.dumps, dumps
    try:
        instrument.configure_logging("DEBUG", sink=logs, json=encoder != "text")
        with instrument.use_trace_id("hostile-test"):
            bound = logger.bind(**fields)
            bound.info(message)
            bound.opt(raw=False).warning("{}", message)
            if error is not None:
                try:
                    raise HostileError(error)
                except HostileError:
                    bound.exception(message)
        logger.remove()
    finally:
        _logging.dumps = previous
    lines = logs.text.splitlines()
    if encoder == "text":  # readable text: one line a record, but for a traceback's own lines
        assert len(logs.chunks) == (3 if error is not None else 2)
        assert [chunk.count("\n") for chunk in logs.chunks[:2]] == [1, 1]
        assert logs.chunks[-1].splitlines()[1:2] in ([], ["Traceback (most recent call last):"])
        return
    assert len(logs.chunks) == len(lines) == (3 if error is not None else 2)
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict)
        assert record["trace_id"] == "hostile-test"
        assert isinstance(record["message"], str)


# -- hostile requests to the real servers ------------------------------------------------------

def raw_request(url: str, request: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes, or its first response)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in request:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(found.group(1)) if found else None


HOSTILE_REQUESTS: dict[str, bytes] = {
    "64 KB header": b"GET /items/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536
                    + b"\r\nConnection: close\r\n\r\n",
    "5,000 headers": b"GET /items/1 HTTP/1.1\r\nHost: x\r\n"
                     + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
                     + b"Connection: close\r\n\r\n",
    "non-UTF-8 header values": b"GET /items/1 HTTP/1.1\r\nHost: x\r\nX-Trace-ID: \xff\xfe\x80"
                               b"\r\ntraceparent: 00-\xc3\x28-\xff\r\ntracestate: a=\xff"
                               b"\r\nX-Other: \xed\xa0\x80\r\nConnection: close\r\n\r\n",
    "non-UTF-8 path": b"GET /items/\xff\xfe%ff%fe\x80 HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n",
    "hostile trace ID": b"GET /items/2 HTTP/1.1\r\nHost: x\r\nX-Trace-ID: \x1b[31m\"{}'\\\x7f"
                        b"\r\nConnection: close\r\n\r\n",
    "128-char trace ID": b"GET /items/3 HTTP/1.1\r\nHost: x\r\nX-Trace-ID: " + b"t" * 128
                         + b"\r\nConnection: close\r\n\r\n",
    "129-char trace ID": b"GET /items/3 HTTP/1.1\r\nHost: x\r\nX-Trace-ID: " + b"t" * 129
                         + b"\r\nConnection: close\r\n\r\n",
}


@contextmanager
def fastapi_server() -> Iterator[str]:
    from fastapi import FastAPI

    from instrument.adapters.fastapi import instrument_app

    app = FastAPI()

    @app.get("/items/{n}")
    def item(n: str) -> str:
        logger.info("item {}", n)
        return n

    with serve_asgi(instrument_app(app), access_log=True) as url:
        yield url


@contextmanager
def aiohttp_server() -> Iterator[str]:
    from aiohttp import web

    from instrument.adapters.aiohttp import instrument_app
    from tests.adapters.apps.aiohttp_app import serving

    app = web.Application()

    async def item(request: web.Request) -> web.Response:
        logger.info("item {}", request.match_info["n"])
        return web.Response(text=request.match_info["n"])

    app.router.add_get("/items/{n}", item)
    with serving(instrument_app(app), access_log=True) as url:
        yield url


@contextmanager
def werkzeug_server() -> Iterator[str]:
    from flask import Flask

    from instrument.adapters.flask import instrument_app
    from tests.adapters.apps.flask_app import serving

    app = Flask(__name__)

    @app.get("/items/<n>")
    def item(n: str) -> str:
        logger.info("item {}", n)
        return n

    with serving(instrument_app(app)) as url:
        yield url


SERVERS = {"uvicorn": fastapi_server, "aiohttp": aiohttp_server, "werkzeug": werkzeug_server}


@pytest.mark.slow
@pytest.mark.no_internal_errors
@pytest.mark.parametrize("server", SERVERS)
def test_hostile_requests_get_the_servers_answer_and_break_nothing(server: str) -> None:
    """Each request gets an answer (the server's own 400/431, or the app's), then an ordinary
    request is served as ever; the toolkit counted exactly the requests that reached it (those
    answered with its X-Trace-ID), each accepted ID is valid, every log line parses."""
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    answers: dict[str, tuple[int | None, bytes | None]] = {}
    with SERVERS[server]() as url:
        for name, request in HOSTILE_REQUESTS.items():
            answer = raw_request(url, request)
            head = answer.split(b"\r\n\r\n", 1)[0]
            trace = re.search(rb"(?im)^x-trace-id: *(.*?)\r?$", head)
            answers[name] = (status_of(answer), trace.group(1) if trace else None)
            ordinary = raw_request(url, b"GET /items/ok HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n")
            assert status_of(ordinary) == 200, (name, ordinary[:200])
        reached = sum(trace is not None for _status, trace in answers.values())
        served = reached + len(HOSTILE_REQUESTS)  # and each ordinary one
        wait_until(lambda: len(logs.events("request")) == served, timeout=10)
        metrics = scrape(url + "/metrics")
    assert all(status is not None for status, _trace in answers.values()), answers
    for _status, trace in answers.values():
        assert trace is None or ID.fullmatch(trace.decode("latin-1")), answers
    assert answers["128-char trace ID"][1] == b"t" * 128
    assert answers["129-char trace ID"][1] not in (None, b"t" * 129)
    assert metrics.value("http_requests_total") == served
    assert metrics.value("trace_requests_total") == served
    assert metrics.value("http_requests_in_progress") == 0
    for line in logs.text.splitlines():
        assert isinstance(json.loads(line), dict)
    print(server, {name: status for name, (status, _t) in answers.items()})


# -- 100,000 random paths and model names ---------------------------------------------------------

LIMIT = 20
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def random_path(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"/items/{rng.getrandbits(64):x}"
    if kind == 1:
        return f"/users/{rng.getrandbits(32)}/orders/{rng.getrandbits(32)}"
    if kind == 2:
        return "/" + "".join(rng.choice("abcdefghij/\u00e9\U0001f600%") for _ in range(20))
    return f"/r{rng.getrandbits(40)}"


def drive(app: Any, requests: list[tuple[str, str]]) -> list[int]:
    """Each request through the ASGI app directly, as a server would hand it over."""

    async def one(method: str, path: str) -> int:
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(
                     "utf-8", "surrogatepass"), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"x")], "client": ("127.0.0.1", 1), "server": ("x", 80)}
        await app(scope, receive, send)
        return status[0]

    async def main() -> list[int]:
        return [await one(method, path) for method, path in requests]

    return asyncio.run(main())


@pytest.mark.no_internal_errors
def test_100000_random_paths_and_models_stay_within_the_cardinality_limits(
        registry: CollectorRegistry) -> None:
    """50,000 requests to random paths with random methods (FastAPI, routed and not), 50,000
    calls with random model names: every one counted, and no label of any family takes more
    than max_label_values values plus ``other``; the series count is bounded by them."""
    from fastapi import FastAPI
    from starlette.responses import PlainTextResponse

    from instrument.adapters.fastapi import instrument_app

    instrument.configure(registry=registry, max_label_values=LIMIT)
    app = FastAPI()

    @app.api_route("/items/{item}", methods=METHODS)
    def item(item: str) -> PlainTextResponse:
        return PlainTextResponse(item, status_code=200 + int(item[-1], 16) % 7)

    @app.get("/users/{user}/orders/{order}")
    def order(user: str, order: str) -> str:
        return order

    rng = random.Random(14)
    requests = [(rng.choice(METHODS), random_path(rng)) for _ in range(50_000)]
    statuses = drive(instrument_app(app), requests)

    @track_provider("openai")
    def call(model: str) -> dict[str, Any]:
        return {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    models = ["".join(rng.choice("abcdefghijklmnop-.:/\u00e9") for _ in range(rng.randint(1, 40)))
              for _ in range(50_000)]
    for model in models:
        call(model)
    metrics = Scrape(generate_latest(registry).decode())
    assert metrics.value("http_requests_total") == 50_000 == len(statuses)
    assert metrics.value("provider_requests_total") == 50_000
    assert metrics.value("provider_tokens_total", type="input") == 50_000
    series: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    values: dict[tuple[str, str], set[str]] = {}
    for sample in metrics.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        series.setdefault(sample.name, set()).add(tuple(sorted(labels.items())))
        for name, value in labels.items():
            values.setdefault((sample.name, name), set()).add(value)
    for (sample_name, label), seen in values.items():
        assert len(seen) <= LIMIT + 1, (sample_name, label, len(seen))
        assert all(len(value) <= 128 for value in seen)
    total = sum(len(s) for s in series.values())
    assert len(series["http_requests_total"]) <= (LIMIT + 1) ** 3
    assert len({s.labels["model"] for s in metrics.samples
                if s.name == "provider_requests_total"}) == LIMIT + 1
    print(f"100,000 requests and calls: {total} series in {len(series)} sample names")
