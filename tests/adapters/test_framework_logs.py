"""A served request's log lines, the framework's own routed in, each framework under its real
server: no secret reaches the JSON log (keys planted in an unhandled exception's message, in
a query string the server's access line repeats, in a URL the httpx client logs), and the
server's access line carries the request's trace ID."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import httpx
import pytest

from tests.conftest import LogCapture
from tests.helpers import serve_asgi, wait_until

OPENAI_KEY = "sk-proj-PLANTEDopenai0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-PLANTEDanthropic0123456789"
BEARER = "PLANTEDbearer0123456789"
QUERY = {"api_key": "PLANTEDquery1", "token": "PLANTEDquery2", "sig": "PLANTEDquery3",
         "page": "2"}


class AuthenticationError(Exception):
    """What a provider SDK raises: the key it was given is in the message."""


def leak() -> None:
    raise AuthenticationError(
        f"Error code: 401 - Incorrect API key provided: {OPENAI_KEY}. Retried with "
        f"{ANTHROPIC_KEY}; sent {{'Authorization': 'Bearer {BEARER}'}}")


@contextmanager
def fastapi_server() -> Iterator[str]:
    from fastapi import FastAPI

    from instrument.adapters.fastapi import instrument_app

    app = FastAPI()

    @app.get("/leak")
    def leaking() -> None:
        leak()

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    # uvicorn's own access line (with the query string) and error line, routed to our sink
    with serve_asgi(instrument_app(app), access_log=True) as url:
        yield url


@contextmanager
def flask_server() -> Iterator[str]:
    from flask import Flask

    from instrument.adapters.flask import instrument_app
    from tests.adapters.apps.flask_app import serving

    app = Flask(__name__)
    app.add_url_rule("/leak", "leak", leak)
    app.add_url_rule("/ok", "ok", lambda: "ok")
    with serving(instrument_app(app)) as url:  # werkzeug's access line is on by default
        yield url


@contextmanager
def aiohttp_server() -> Iterator[str]:
    from aiohttp import web

    from instrument.adapters.aiohttp import instrument_app
    from tests.adapters.apps.aiohttp_app import serving

    async def leaking(request: web.Request) -> web.Response:
        leak()
        raise AssertionError("unreachable")

    async def ok(request: web.Request) -> web.Response:
        await asyncio.sleep(0)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/leak", leaking)
    app.router.add_get("/ok", ok)
    instrument_app(app)
    with serving(app) as url:
        yield url


SERVERS: dict[str, Callable[[], AbstractContextManager[str]]] = {
    "fastapi": fastapi_server, "flask": flask_server, "aiohttp": aiohttp_server}


# The logger of the server's own access line (aiohttp's test server runs without one).
ACCESS_LOGGER = {"fastapi": "uvicorn.access", "flask": "werkzeug", "aiohttp": None}


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with SERVERS[request.param]() as url:
        yield request.param, url


def assert_no_secret(logs: LogCapture) -> None:
    for line in logs.text.splitlines():
        assert "PLANTED" not in line, line


@pytest.mark.slow
def test_a_key_in_an_unhandled_exception_is_redacted(server: tuple[str, str],
                                                    logs: LogCapture) -> None:
    with httpx.Client(base_url=server[1], timeout=10) as client:
        assert client.get("/leak", params=QUERY).status_code == 500
    (logged,) = wait_until(lambda: logs.events("unhandled_exception"))
    exception = logged["exception"]
    assert exception["type"] == "AuthenticationError"
    assert "Incorrect API key provided: [REDACTED]" in exception["value"]
    assert "'Authorization': '[REDACTED]'" in exception["value"]
    assert "Incorrect API key provided: [REDACTED]" in exception["traceback"]
    assert_no_secret(logs)


@pytest.mark.slow
def test_the_servers_own_access_line_has_its_query_secrets_replaced(server: tuple[str, str],
                                                                    logs: LogCapture) -> None:
    framework, url = server
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/ok", params=QUERY).status_code == 200
    wait_until(lambda: logs.events("request"))
    access_logger = ACCESS_LOGGER[framework]
    if access_logger is not None:
        (line,) = wait_until(lambda: [r for r in logs.records if r["logger"] == access_logger])
        assert "api_key=[REDACTED]" in line["message"]
        assert "token=[REDACTED]" in line["message"]
        assert "sig=[REDACTED]" in line["message"]
        assert "page=2" in line["message"]  # only secret-looking parameters
    assert_no_secret(logs)


def test_httpx_request_lines_have_their_query_secrets_replaced(logs: LogCapture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="ok")

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        client.get("http://llm.local/v1/generate", params={"key": "PLANTEDgoogle", "alt": "sse"})
    (line,) = [r for r in logs.records if r["logger"] == "httpx"]
    assert line["message"].startswith("HTTP Request: GET http://llm.local/v1/generate?")
    assert "key=[REDACTED]" in line["message"] and "alt=sse" in line["message"]
    assert_no_secret(logs)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_the_servers_own_access_line_carries_the_trace_id(framework: str,
                                                          logs: LogCapture) -> None:
    access_logger = ACCESS_LOGGER[framework]
    with SERVERS[framework]() as url, httpx.Client(base_url=url, timeout=10) as client:
        for trace in ("access-line-1", "access-line-2"):
            assert client.get("/ok", headers={"X-Trace-ID": trace}).status_code == 200
        lines = wait_until(lambda: len([r for r in logs.records
                                        if r["logger"] == access_logger]) == 2 and
                           [r for r in logs.records if r["logger"] == access_logger])
    assert [r["trace_id"] for r in lines] == ["access-line-1", "access-line-2"]
