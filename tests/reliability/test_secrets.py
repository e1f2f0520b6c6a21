"""Planted secrets never reach a log line, a metric label or ``/metrics/summary``, whatever the
level, the line format, the queue or ``log_io``; and the last test of the run searches every
line the whole reliability run emitted (``conftest.py``, ``planted.py``).

Planted: in ``Authorization``, ``Cookie``, ``Set-Cookie`` and ``X-Api-Key`` headers (served
and outgoing), in arguments and fields named ``api_key``/``token``/``secret``/``password`` at
every depth, in header pair lists (``str`` and ASGI's bytes), in the query strings of served
requests (uvicorn's access line repeats them) and of outgoing ones (httpx's line), and in the
message of the openai SDK's exception (the key it was given, as OpenAI's 401 says it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from loguru import logger
from starlette.responses import PlainTextResponse

import instrument
from instrument import record_usage, trace_span, track_provider
from instrument._redact import scrub
from instrument.adapters.aiohttp import client_trace_config
from instrument.adapters.fastapi import instrument_app
from instrument.adapters.httpx import instrument_client
from instrument.adapters.openai import instrument_openai
from tests.conftest import LogCapture
from tests.fakes import llm_server
from tests.helpers import scrape, serve_asgi, wait_until
from tests.reliability.common import fake_upstream
from tests.reliability.conftest import LAST
from tests.reliability.planted import CANARY, COLLECTED, PLANTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

P = PLANTED


def nested(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """``leaf`` under ``depth`` levels of ordinary names."""
    value: dict[str, Any] = leaf
    for level in range(depth):
        value = {f"level{level}": value, "n": level}
    return value


def payload() -> dict[str, Any]:
    """Secret-named fields at every depth from 0 to 12 (past 8 the whole branch is redacted)."""
    return {"api_key": P["api_key_arg"], "user": {"token": P["token_field"]},
            **{f"at{d}": nested(d, {"secret": P["secret_nested"],
                                    "list": [{"password": P["password_deep"]}]})
               for d in range(13)}}


def leaks_in(text: str) -> list[str]:
    return [place for place, value in P.items() if value in text]


@track_provider("openai", log_io=True)
def complete(prompt: str, model: str = "gpt-4o-mini", api_key: str = "", secret: Any = None,
             extra_headers: Any = None) -> dict[str, Any]:
    record_usage(input_tokens=10, output_tokens=2)
    return {"text": "ok", "echo": {"password": P["password_deep"]}}


@pytest.fixture
def sdk_401(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake provider's 401 names the key it was sent, as OpenAI's does."""
    monkeypatch.setitem(llm_server.OPENAI_ERRORS, 401, {
        "message": f"Incorrect API key provided: {P['provider_key']}. You can find your API "
                   f"key at https://platform.example/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"})


def secret_app(fake_url: str, fake_openai_url: str) -> FastAPI:
    app = FastAPI()

    @app.get("/chat")
    async def chat(request: Request) -> PlainTextResponse:
        headers = request.headers
        # fields: a mapping, str pairs, ASGI's bytes pairs, nested payloads
        logger.info("got headers", headers=dict(headers), pairs=list(headers.items()),
                    raw=request.scope["headers"], body=payload())
        # text: reprs the redaction reads (quoted pairs, a pair list)
        logger.info("headers {} pairs {}", dict(headers), list(headers.items()))
        logger.debug("raw scope headers {}", request.scope["headers"])
        with trace_span("work", api_key=P["api_key_arg"], nested=payload()):
            complete("hi", api_key=P["api_key_arg"], secret={"token": P["token_field"]},
                     extra_headers=[("X-Api-Key", P["x_api_key"])])
            async with instrument_client(httpx.AsyncClient(timeout=10)) as http:
                await http.post(f"{fake_url}/v1/chat/completions",
                                params={"token": P["client_query"], "note": CANARY},
                                headers={"Authorization": f"Bearer {P['bearer']}",
                                         "X-Api-Key": P["x_api_key"]},
                                json={"model": "gpt-4o-mini", "messages": []})
            async with aiohttp.ClientSession(trace_configs=[client_trace_config()]) as session:
                async with session.post(f"{fake_url}/v1/chat/completions",
                                        params={"api_key": P["client_query"]},
                                        headers={"X-Api-Key": P["x_api_key"]},
                                        json={"model": "gpt-4o-mini", "messages": []}) as r:
                    await r.read()
        response = PlainTextResponse("ok")
        response.set_cookie("sid", P["set_cookie"])
        return response

    @app.get("/sdk")
    async def sdk() -> PlainTextResponse:
        client = instrument_openai(openai.AsyncOpenAI(base_url=fake_openai_url,
                                                      api_key=P["provider_key"], max_retries=0))
        async with client:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[])
        return PlainTextResponse("unreachable: the fake answers 401")

    return app


@pytest.mark.parametrize(("level", "json_lines", "queue_size"), [
    ("DEBUG", True, 0), ("DEBUG", False, 0), ("INFO", True, 1000)],
    ids=["debug-json", "debug-text", "info-json-queue"])
@pytest.mark.usefixtures("sdk_401")
def test_no_planted_secret_reaches_a_line_a_label_or_the_summary(
        level: str, json_lines: bool, queue_size: int) -> None:
    logs = LogCapture()
    instrument.configure_logging(level, sink=logs, json=json_lines, queue_size=queue_size)
    with fake_upstream() as fake:
        with serve_asgi(instrument_app(secret_app(fake.url, fake.openai_url)),
                        access_log=True) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                ok = client.get("/chat", params={"api_key": P["served_query"], "note": CANARY},
                                headers={"Authorization": f"Bearer {P['bearer']}",
                                         "Cookie": f"session={P['cookie']}; theme=dark",
                                         "X-Api-Key": P["x_api_key"]})
            fake.fail_next = [401]
            failed = httpx.get(url + "/sdk", headers={"Authorization": P["authorization"]})
            with httpx.Client(base_url=url, timeout=30) as client:
                summary = client.get("/metrics/summary").text
            wait_until(lambda: logs.text.count('"event":"request"' if json_lines
                                               else "GET /sdk") >= (2 if json_lines else 1),
                       timeout=10)
            metrics = scrape(url + "/metrics")
        instrument.configure_logging("INFO", sink=LogCapture())  # drains the queue
    assert (ok.status_code, failed.status_code) == (200, 500)
    assert ok.cookies.get("sid") == P["set_cookie"]  # it was sent, and is in no line
    lines = logs.text.splitlines()
    assert len(lines) > 10
    if json_lines:
        records = [json.loads(line) for line in lines]
        assert any(r.get("event") == "unhandled_exception" for r in records)
        assert any(r.get("logger") == "uvicorn.access" for r in records)
        if level == "DEBUG":
            assert any(r.get("event") == "span" for r in records)
    assert CANARY in logs.text  # the lines that carried the secrets are the ones searched
    assert "invalid_api_key" in logs.text or "Incorrect API key" in logs.text
    assert leaks_in(logs.text) == []
    assert leaks_in(metrics.text) == []
    assert leaks_in(summary) == []


# -- the redaction rules the run found lacking (each failed before its fix) ----------------------

def test_a_header_pair_list_written_as_text_is_redacted() -> None:
    """``str([(b"x-api-key", b"...")])``: the repr of ASGI's pairs, or of str pairs, in a
    message, an exception or a field's text."""
    for pairs in ([(b"x-api-key", P["x_api_key"].encode())],
                  [("X-Api-Key", P["x_api_key"]), ("Accept", "text/plain")],
                  (("authorization", P["authorization"]),)):
        text = scrub(f"headers were {pairs}")
        assert P["x_api_key"] not in text and P["authorization"] not in text, text
    assert scrub("[('Accept', 'text/plain')]") == "[('Accept', 'text/plain')]"


def test_a_quoted_secret_value_is_redacted_whole() -> None:
    """``'cookie': 'theme=dark; sid=...'``: a quoted value is redacted to its closing quote,
    not to its first ``;`` or space."""
    for text in (f"{{'cookie': 'theme=dark; sid={P['cookie']}'}}",
                 f'{{"Cookie": "theme=dark; id={P["cookie"]}"}}',
                 f"{{'set-cookie': 'a=1; Path=/, b={P['set_cookie']}'}}",
                 f"{{'x-api-key': 'two words {P['x_api_key']}'}}"):
        assert leaks_in(scrub(text)) == [], scrub(text)
    assert scrub("{'accept': 'text/plain; q=1'}") == "{'accept': 'text/plain; q=1'}"


# -- the search of the whole run ---------------------------------------------------------------

def _files_under(root: Path) -> Iterator[tuple[Path, str]]:
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 * 1024 * 1024:
            yield path, path.read_bytes().decode("latin-1")


def test_zz_no_planted_secret_in_the_whole_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Run last (``conftest.py`` orders it): every line every reliability test emitted, every
    scrape, every registry, every file under pytest's temporary directory (gunicorn's logs):
    not one planted value. The canary (planted where nothing redacts, in every load test's
    query string) must be found in each load test that ran: the search saw their lines."""
    assert LAST == "test_zz_no_planted_secret_in_the_whole_run"
    leaks = COLLECTED.leaks()
    base = tmp_path_factory.getbasetemp()
    files = dict(_files_under(base))
    for path, text in files.items():
        leaks += [f"{place} in {path}" for place in leaks_in(text)]
    assert leaks == [], leaks[:10]
    tests = [t for t in COLLECTED.lines if t.startswith("tests/reliability/")]
    for test in tests:
        if "/test_load_" not in test or "gunicorn" in test:
            continue
        assert any(CANARY in text for text in COLLECTED.lines[test]), test
    if any("gunicorn_threads" in t for t in tests):
        assert any(CANARY in text and "gunicorn.access" in text for text in files.values())
    print(f"searched {len(tests)} tests' output ({COLLECTED.total_chars():,} characters) "
          f"and {len(files)} files: no planted value")


def test_the_collection_sees_a_leak() -> None:
    """The search itself: a planted value written where nothing redacts would be found."""
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    logger.info("free text is not redacted: " + CANARY)
    where = COLLECTED.current
    assert any(CANARY in text for text in COLLECTED.lines[where])


def test_a_failing_sinks_own_secret_stays_out_of_its_report(
        capsys: pytest.CaptureFixture[str], expect_internal_errors: None) -> None:
    """A log shipper failing with its ingest URL (token in the query) in the exception: the
    one-line report on stderr names the error, scrubbed."""

    def shipper(line: str) -> None:
        raise ConnectionError(f"POST https://logs.example/ingest?token={P['client_query']} "
                              f"refused with Authorization: Bearer {P['bearer']}")

    instrument.configure_logging("INFO", sink=shipper)
    logger.info("hello")
    err = capsys.readouterr().err
    COLLECTED.add(err)
    (report,) = [json.loads(line) for line in err.splitlines() if "log_sink" in line]
    assert report["error_type"] == "ConnectionError"
    assert "token=[REDACTED]" in report["error"]
    assert leaks_in(err) == []
