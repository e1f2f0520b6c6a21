"""Tests for redaction: each case plants a secret, logs it through the JSON sink, and greps
every line for it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from loguru import logger

from instrument._redact import MAX_DEPTH, is_secret_key, redact, scrub
from tests.conftest import LogCapture

SECRET = "PLANTED-s3cr3t-value"


def assert_absent(logs: LogCapture, secret: str = SECRET) -> None:
    lines = logs.text.splitlines()
    assert lines, "nothing was logged: the test would pass for nothing"
    for line in lines:
        assert secret not in line, line


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"api_key": SECRET}
    for _ in range(depth):
        value = {"config": value}
    return value


@pytest.mark.parametrize("depth", [0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 5, 50])
def test_secrets_are_redacted_at_any_depth_past_the_cap_too(logs: LogCapture,
                                                            depth: int) -> None:
    logger.bind(config=nested(depth)).info("deep")
    assert_absent(logs)
    assert "[REDACTED]" in logs.text


def test_a_cycle_ends_in_redacted_not_a_crash(logs: LogCapture) -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    logger.bind(cyclic=cyclic).info("cycle")
    (record,) = logs.records
    assert record["cyclic"]["name"] == "loop"


def test_headers_given_as_pairs_are_redacted(logs: LogCapture) -> None:
    logger.bind(
        headers=[("Authorization", f"Bearer {SECRET}"), ("Accept", "application/json")],
        asgi=[(b"x-api-key", SECRET.encode()), (b"host", b"llm.local")],
        tuples=(("Cookie", f"session={SECRET}"),),
    ).info("pairs")
    assert_absent(logs)
    (record,) = logs.records
    assert record["headers"] == [["Authorization", "[REDACTED]"],
                                 ["Accept", "application/json"]]
    assert record["asgi"][1] == ["host", "llm.local"]


@pytest.mark.parametrize("key", ["bearer", "auth", "private_key", "privateKey", "x-auth-token",
                                 "client_secret", "refresh_token", "passwd", "sig", "key",
                                 "proxy-authorization", "accessToken", "jwt", "api-key"])
def test_secret_looking_names(logs: LogCapture, key: str) -> None:
    assert is_secret_key(key)
    logger.bind(**{key: SECRET}).info("named")
    assert_absent(logs)


@pytest.mark.parametrize("key", ["author", "tokens", "prompt_tokens", "max_tokens", "monkey",
                                 "route", "status", "keyboard", "span_id", "trace_id",
                                 "session_count", "cache"])
def test_ordinary_names_are_kept(key: str) -> None:
    assert not is_secret_key(key)


@pytest.mark.parametrize("text, kept", [
    ("GET /items/1?api_key={s}&page=2 HTTP/1.1", "page=2"),
    ("HTTP Request: GET http://llm.local/v1/generate?key={s}&alt=sse", "alt=sse"),
    ("https://x.blob/f?sv=2024&sig={s}&se=2026", "sv=2024"),
    ("token={s}", ""),
    ("retrying with access_token={s} now", "now"),
    ("login password={s};", ""),
    ("Incorrect API key provided: sk-{s}", "Incorrect API key provided"),
    ("key sk-ant-api03-{s} rejected", "rejected"),
    ("Authorization: Bearer {s}", "Authorization"),
    ("Authorization: basic {s}", "Authorization"),
    ("{{'api_key': '{s}', 'model': 'gpt'}}", "'model': 'gpt'"),
    ('{{"Authorization": "Bearer {s}"}}', '"Authorization"'),
])
def test_secrets_inside_text_are_replaced(text: str, kept: str) -> None:
    scrubbed = scrub(text.format(s=SECRET))
    assert SECRET not in scrubbed
    assert kept in scrubbed
    assert "[REDACTED]" in scrubbed


@pytest.mark.parametrize("text", ["GET /items/1 200", "status=200 route=/chat", "ratio: 0.5",
                                  "the basic plan", "a=b", "desk-lamp-12345678",
                                  "prompt_tokens=10 completion_tokens=5"])
def test_text_without_secrets_is_untouched(text: str) -> None:
    assert scrub(text) == text


def test_messages_and_string_fields_are_scrubbed(logs: LogCapture) -> None:
    logger.bind(url=f"https://llm.local/v1?key={SECRET}").info(
        "calling https://llm.local/v1?api_key={}", SECRET)
    assert_absent(logs)
    (record,) = logs.records
    assert record["url"] == "https://llm.local/v1?key=[REDACTED]"


def test_stdlib_lines_routed_in_are_scrubbed(logs: LogCapture) -> None:
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                                             f"/items/1?api_key={SECRET}&token={SECRET}",
                                             "1.1", 200)
    logging.getLogger("werkzeug").info(f'127.0.0.1 - - "GET /x?password={SECRET} HTTP/1.1" 200 -')
    assert_absent(logs)
    assert len(logs.records) == 2


def test_exception_messages_and_tracebacks_are_scrubbed(logs: LogCapture) -> None:
    def call_provider(api_key: str) -> None:
        raise PermissionError(f"Incorrect API key provided: {api_key}")

    try:
        call_provider(f"sk-proj-{SECRET}")
    except PermissionError:
        logger.exception("provider failed")
    assert_absent(logs)
    (record,) = logs.records
    assert record["exception"]["value"] == "Incorrect API key provided: [REDACTED]"
    assert "PermissionError: Incorrect API key provided: [REDACTED]" in (
        record["exception"]["traceback"])


def test_objects_are_written_as_their_scrubbed_str(logs: LogCapture) -> None:
    class Config:
        def __str__(self) -> str:
            return f"Config(api_key={SECRET})"

    logger.bind(config=Config(), raw=f"x-api-key={SECRET}".encode()).info("objects")
    assert_absent(logs)


def test_redact_leaves_the_callers_value_alone() -> None:
    headers = {"Authorization": SECRET}
    assert redact(headers) == {"Authorization": "[REDACTED]"}
    assert headers == {"Authorization": SECRET}
