"""The Anthropic SDK adapter, with the real ``anthropic`` SDK against the fake provider.

The fake reports ``input_tokens`` 1200 (which exclude the cache), 1000 cache-read
and 500 cache-write tokens and 80 output tokens, so the call's input is
1200 + 1000 + 500 = 2700 tokens. claude-3-5-haiku (input 0.8, cached_input 0.08,
cache_write 1.0, output 4.0 per million) costs
(1200 * 0.8 + 1000 * 0.08 + 500 * 1.0 + 80 * 4.0) / 1e6 = (960 + 80 + 500 + 320) / 1e6
= 0.00186.
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import pytest
from prometheus_client import CollectorRegistry

from instrument import trace_span
from instrument._propagation import parse_traceparent
from instrument.adapters.anthropic import instrument_anthropic
from tests.adapters.sdk_helpers import (
    all_provider_calls,
    calls,
    cost,
    errors,
    fake,
    inflight,
    only,
    tokens,
    ttft_count,
    unpriced,
)
from tests.conftest import LogCapture
from tests.fakes.llm_server import FakeLLM

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

MESSAGES = [{"role": "user", "content": "hi"}]
HAIKU = "claude-3-5-haiku-latest"
COST = 0.00186
TOKENS = {"input": 2700, "output": 80, "cached_input": 1000, "cache_write": 500}


@pytest.fixture
def client(fake: FakeLLM) -> Iterator[anthropic.Anthropic]:
    fake.usage.cache_write = 500
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0) as made:
        yield instrument_anthropic(made)


def create(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    return client.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES, **kwargs)


def helper(client: anthropic.Anthropic) -> Any:
    return client.messages.stream(model=HAIKU, max_tokens=64, messages=MESSAGES)


def assert_cancelled_without_usage(registry: CollectorRegistry, seen_start: bool) -> None:
    """Stopped early: the message_start event already said the input (Anthropic sends it
    first), so the prompt is counted and priced; the output is not known."""
    assert calls(registry, "anthropic", HAIKU) == {"cancelled": 1}
    if seen_start:
        assert tokens(registry, "anthropic", HAIKU) == {**TOKENS, "output": 1}
        assert unpriced(registry, "anthropic", HAIKU) == {}
    else:
        assert unpriced(registry, "anthropic", HAIKU) == {"cancelled": 1}
    assert inflight(registry, "anthropic") == 0


def test_a_message_counts_cache_reads_and_writes_and_cost(
        client: anthropic.Anthropic, registry: CollectorRegistry, logs: LogCapture) -> None:
    message = create(client)
    assert isinstance(message, anthropic.types.Message)
    assert message.content[0].text == "Hello world"  # type: ignore[union-attr]
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}
    assert tokens(registry, "anthropic", HAIKU) == TOKENS
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(COST)
    event = only(logs.events("provider_call"))
    assert (event["model"], event["response_model"]) == (HAIKU, "claude-3-5-haiku-20241022")
    assert (event["operation"], event["cache_write_tokens"]) == ("messages", 500)


def test_trace_headers_reach_the_provider(client: anthropic.Anthropic, fake: FakeLLM,
                                          logs: LogCapture) -> None:
    with trace_span("handler") as span:
        create(client)
        with helper(client) as stream:
            stream.until_done()
    spans = [e["span_id"] for e in logs.events("provider_call")]
    sent = [r.headers for r in fake.received]
    assert [h["x-trace-id"] for h in sent] == [span.trace_id] * 2
    assert [parse_traceparent(h["traceparent"]) for h in sent] == [
        (span.trace_id, s) for s in spans]


def test_http_errors_pass_through_by_sdk_class(client: anthropic.Anthropic, fake: FakeLLM,
                                               registry: CollectorRegistry) -> None:
    fake.fail_next = [429, 500]
    with pytest.raises(anthropic.RateLimitError) as limited:
        create(client)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError):
        with helper(client):
            pass
    assert calls(registry, "anthropic", HAIKU) == {"error": 2}
    assert errors(registry, "anthropic", HAIKU, "RateLimitError") == 1
    assert errors(registry, "anthropic", HAIKU, "InternalServerError") == 1
    assert unpriced(registry, "anthropic", HAIKU) == {}
    assert inflight(registry, "anthropic") == 0


# --- messages.create(stream=True) -----------------------------------------------------


def test_an_event_stream_read_to_the_end(client: anthropic.Anthropic,
                                         registry: CollectorRegistry) -> None:
    stream = create(client, stream=True)
    assert isinstance(stream, anthropic.Stream)
    assert stream.response.headers["anthropic-ratelimit-requests-remaining"] == "3999"
    assert [e.type for e in stream][-2:] == ["message_delta", "message_stop"]
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}
    assert tokens(registry, "anthropic", HAIKU) == TOKENS
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(COST)
    assert ttft_count(registry, "anthropic", HAIKU) == 1
    assert inflight(registry, "anthropic") == 0


def test_break_then_close_and_with_exit_and_drop_are_cancelled(
        client: anthropic.Anthropic, registry: CollectorRegistry) -> None:
    stream = create(client, stream=True)
    for event in stream:
        if event.type == "content_block_delta":
            break
    stream.close()
    assert_cancelled_without_usage(registry, seen_start=True)
    with create(client, stream=True):
        pass  # nothing read: not even message_start
    dropped = create(client, stream=True)
    del dropped
    gc.collect()
    assert calls(registry, "anthropic", HAIKU) == {"cancelled": 3}
    assert unpriced(registry, "anthropic", HAIKU) == {"cancelled": 2}
    assert inflight(registry, "anthropic") == 0


def test_an_error_event_mid_stream_passes_through(client: anthropic.Anthropic, fake: FakeLLM,
                                                  registry: CollectorRegistry) -> None:
    fake.error_after = 1
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        list(create(client, stream=True))
    assert calls(registry, "anthropic", HAIKU) == {"error": 1}
    assert errors(registry, "anthropic", HAIKU, "APIStatusError") == 1
    # message_start said the input: the prompt is priced, the output stays at 1 token
    assert tokens(registry, "anthropic", HAIKU)["input"] == 2700


# --- messages.stream() ---------------------------------------------------------------------


def test_the_stream_helper_keeps_text_stream_and_final_message(
        client: anthropic.Anthropic, registry: CollectorRegistry, logs: LogCapture) -> None:
    with helper(client) as stream:
        assert isinstance(stream, anthropic.lib.streaming.MessageStream)
        assert "".join(stream.text_stream) == "Hello world"
        assert stream.get_final_message().usage.output_tokens == 80
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}
    assert tokens(registry, "anthropic", HAIKU) == TOKENS
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(COST)
    assert ttft_count(registry, "anthropic", HAIKU) == 1
    assert len(logs.events("provider_call")) == 1


def test_the_helpers_final_text_alone_reads_the_stream(client: anthropic.Anthropic,
                                                       registry: CollectorRegistry) -> None:
    with helper(client) as stream:
        assert stream.get_final_text() == "Hello world"
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}
    assert tokens(registry, "anthropic", HAIKU) == TOKENS


def test_leaving_or_closing_the_helper_early_is_cancelled(
        client: anthropic.Anthropic, registry: CollectorRegistry) -> None:
    with helper(client) as stream:
        for _ in stream.text_stream:
            break
    assert_cancelled_without_usage(registry, seen_start=True)
    with helper(client) as stream:
        stream.close()
        assert calls(registry, "anthropic", HAIKU) == {"cancelled": 2}


def test_a_helper_never_entered_is_finalised_when_dropped(
        client: anthropic.Anthropic, registry: CollectorRegistry) -> None:
    manager = helper(client)
    assert inflight(registry, "anthropic") == 1
    del manager
    gc.collect()
    assert calls(registry, "anthropic", HAIKU) == {"cancelled": 1}
    assert inflight(registry, "anthropic") == 0


# --- the adapter itself ---------------------------------------------------------------------


def test_instrumenting_twice_counts_once(client: anthropic.Anthropic,
                                         registry: CollectorRegistry) -> None:
    instrument_anthropic(client)
    create(client)
    with helper(client) as stream:
        stream.until_done()
    assert calls(registry, "anthropic", HAIKU) == {"ok": 2}
    assert all_provider_calls(registry) == 2


def test_only_anthropic_clients_are_accepted() -> None:
    with pytest.raises(TypeError):
        instrument_anthropic(object())  # type: ignore[type-var]


def test_a_missing_sdk_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)
    monkeypatch.delitem(sys.modules, "instrument.adapters.anthropic")
    with pytest.raises(ImportError, match=r"pip install 'llm-instrument\[anthropic\]'"):
        importlib.import_module("instrument.adapters.anthropic")


# --- the async client ---------------------------------------------------------------------


@pytest.fixture
async def aclient(fake: FakeLLM) -> Any:
    fake.usage.cache_write = 500
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test",
                                        max_retries=0) as made:
        yield instrument_anthropic(made)


@pytest.mark.anyio
async def test_async_create_stream_and_helper(aclient: anthropic.AsyncAnthropic,
                                              registry: CollectorRegistry) -> None:
    message = await aclient.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
    assert message.usage.output_tokens == 80
    stream = await aclient.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES,
                                           stream=True)
    assert isinstance(stream, anthropic.AsyncStream)
    assert len([e async for e in stream]) == 8
    async with aclient.messages.stream(model=HAIKU, max_tokens=64,
                                       messages=MESSAGES) as helped:
        assert await helped.get_final_text() == "Hello world"
    assert calls(registry, "anthropic", HAIKU) == {"ok": 3}
    assert tokens(registry, "anthropic", HAIKU) == {k: 3 * v for k, v in TOKENS.items()}
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(3 * COST)
    assert ttft_count(registry, "anthropic", HAIKU) == 2


@pytest.mark.anyio
async def test_async_task_cancellation_of_a_hanging_helper(
        aclient: anthropic.AsyncAnthropic, fake: FakeLLM, registry: CollectorRegistry) -> None:
    fake.hang_after = 1
    got: list[str] = []

    async def consume() -> None:
        async with aclient.messages.stream(model=HAIKU, max_tokens=64,
                                           messages=MESSAGES) as stream:
            async for text in stream.text_stream:
                got.append(text)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        while not got:
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert got == ["Hel"]
    assert calls(registry, "anthropic", HAIKU) == {"cancelled": 1}
    assert errors(registry, "anthropic", HAIKU, "CancelledError") == 0
    assert tokens(registry, "anthropic", HAIKU)["input"] == 2700  # from message_start
    assert inflight(registry, "anthropic") == 0
