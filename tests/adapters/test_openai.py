"""The OpenAI SDK adapter, with the real ``openai`` SDK against the fake provider on 127.0.0.1.

Figures are worked out by hand from ``instrument/data/prices.json`` (USD per
million tokens). The fake reports 1200 prompt tokens (1000 of them cached) and
80 completion tokens (30 of them reasoning) unless a test says otherwise:
gpt-4o-mini (input 0.15, cached_input 0.075, output 0.6) costs
(200 * 0.15 + 1000 * 0.075 + 80 * 0.6) / 1e6 = (30 + 75 + 48) / 1e6 = 0.000153,
reasoning being a part of the output, not added to it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest
from prometheus_client import CollectorRegistry

from instrument import trace_span
from instrument._propagation import parse_traceparent
from instrument.adapters.openai import instrument_openai
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
from tests.helpers import free_port, value

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

MESSAGES = [{"role": "user", "content": "hi"}]
MINI = "gpt-4o-mini"
COST = 0.000153
TOKENS = {"input": 1200, "output": 80, "cached_input": 1000, "reasoning": 30}
USAGE = {"stream_options": {"include_usage": True}}


@pytest.fixture
def client(fake: FakeLLM) -> Iterator[openai.OpenAI]:
    fake.usage.reasoning = 30
    with openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0) as made:
        yield instrument_openai(made)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=MINI, messages=MESSAGES, **kwargs)


def assert_cancelled_without_usage(registry: CollectorRegistry) -> None:
    assert calls(registry, "openai", MINI) == {"cancelled": 1}
    assert tokens(registry, "openai", MINI) == {}
    assert unpriced(registry, "openai", MINI) == {"cancelled": 1}  # never a silent $0
    assert inflight(registry, "openai") == 0


# --- plain calls ----------------------------------------------------------------------


def test_chat_completion_counts_tokens_by_type_and_cost(
        client: openai.OpenAI, registry: CollectorRegistry, logs: LogCapture) -> None:
    answer = chat(client)
    assert isinstance(answer, openai.types.chat.ChatCompletion)  # the SDK's own object
    assert answer.choices[0].message.content == "Hello world"
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI) == TOKENS
    assert cost(registry, "openai", MINI) == pytest.approx(COST)
    assert unpriced(registry, "openai", MINI) == {}
    assert ttft_count(registry, "openai", MINI) == 0
    event = only(logs.events("provider_call"))
    assert (event["model"], event["response_model"]) == (MINI, "gpt-4o-mini-2024-07-18")
    assert event["operation"] == "chat"
    assert (event["reasoning_tokens"], event["cost_usd"]) == (30, pytest.approx(COST))


def test_trace_headers_reach_the_provider_from_the_calls_span(
        client: openai.OpenAI, fake: FakeLLM, logs: LogCapture) -> None:
    with trace_span("handler") as span:
        chat(client)
    sent = fake.last("/v1/chat/completions").headers
    assert sent["x-trace-id"] == span.trace_id
    event = only(logs.events("provider_call"))
    assert parse_traceparent(sent["traceparent"]) == (span.trace_id, event["span_id"])
    assert event["span_id"] != span.span_id  # the provider call is a child span


def test_the_callers_own_headers_are_kept_and_win(client: openai.OpenAI, fake: FakeLLM) -> None:
    with trace_span("handler"):
        chat(client, extra_headers={"X-Trace-ID": "mine", "X-Team": "search"})
    sent = fake.last().headers
    assert (sent["x-trace-id"], sent["x-team"]) == ("mine", "search")


def test_responses_api_and_embeddings(client: openai.OpenAI,
                                      registry: CollectorRegistry) -> None:
    response = client.responses.create(model=MINI, input="hi")
    assert response.output_text == "Hello world"
    assert tokens(registry, "openai", MINI) == TOKENS
    assert cost(registry, "openai", MINI) == pytest.approx(COST)
    embedded = client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert embedded.data[0].embedding == [0.25, -0.5, 0.125]
    assert tokens(registry, "openai", "text-embedding-3-small") == {"input": 1200}
    # text-embedding-3-small: input 0.02: 1200 * 0.02 / 1e6 = 0.000024
    assert cost(registry, "openai", "text-embedding-3-small") == pytest.approx(0.000024)
    assert calls(registry, "openai", "text-embedding-3-small") == {"ok": 1}


@pytest.mark.parametrize("status, exc_type", [(429, openai.RateLimitError),
                                              (500, openai.InternalServerError)])
def test_an_http_error_passes_through_and_is_counted_by_sdk_class(
        client: openai.OpenAI, fake: FakeLLM, registry: CollectorRegistry, status: int,
        exc_type: type[Exception]) -> None:
    fake.fail_next = [status]
    with pytest.raises(exc_type) as raised:
        chat(client)
    assert raised.value.status_code == status  # type: ignore[attr-defined]
    assert raised.value.body["code"] == (  # type: ignore[attr-defined]
        "rate_limit_exceeded" if status == 429 else None)
    assert calls(registry, "openai", MINI) == {"error": 1}
    assert errors(registry, "openai", MINI, exc_type.__name__) == 1
    # refused before any answer: not billed, so not "unpriced"
    assert unpriced(registry, "openai", MINI) == {}
    assert inflight(registry, "openai") == 0


def test_a_connection_error_passes_through(registry: CollectorRegistry) -> None:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="sk-test",
                       max_retries=0) as made:
        with pytest.raises(openai.APIConnectionError):
            chat(instrument_openai(made))
    assert errors(registry, "openai", MINI, "APIConnectionError") == 1


# --- streams: every way one ends --------------------------------------------------------


def test_a_stream_read_to_the_end_with_the_usage_chunk(
        client: openai.OpenAI, registry: CollectorRegistry) -> None:
    stream = chat(client, stream=True, **USAGE)
    assert isinstance(stream, openai.Stream)  # the SDK's type, its attributes
    assert stream.response.headers["x-ratelimit-remaining-requests"] == "9999"
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello world")
    assert chunks[-1].choices == []  # what include_usage means for the caller
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI) == TOKENS
    assert cost(registry, "openai", MINI) == pytest.approx(COST)
    assert ttft_count(registry, "openai", MINI) == 1
    assert value(registry, "provider_time_per_output_token_seconds_count", provider="openai",
                 model=MINI) == 1
    assert inflight(registry, "openai") == 0
    stream.close()  # after the end: nothing more is recorded
    assert calls(registry, "openai", MINI) == {"ok": 1}


def test_a_stream_without_usage_is_unpriced_not_free(client: openai.OpenAI,
                                                     registry: CollectorRegistry) -> None:
    assert len(list(chat(client, stream=True))) == 5
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert unpriced(registry, "openai", MINI) == {"no_usage": 1}


def test_break_then_close_is_cancelled(client: openai.OpenAI,
                                       registry: CollectorRegistry) -> None:
    stream = chat(client, stream=True, **USAGE)
    for n, _ in enumerate(stream):
        if n == 1:
            break
    assert calls(registry, "openai", MINI) == {}  # still open
    assert inflight(registry, "openai") == 1
    stream.close()
    stream.close()
    assert_cancelled_without_usage(registry)
    assert ttft_count(registry, "openai", MINI) == 1


def test_with_exit_before_the_end_is_cancelled(client: openai.OpenAI,
                                               registry: CollectorRegistry) -> None:
    with chat(client, stream=True, **USAGE) as stream:
        assert next(stream).choices[0].delta.role == "assistant"
    assert_cancelled_without_usage(registry)


def test_a_dropped_stream_is_cancelled_once(client: openai.OpenAI,
                                            registry: CollectorRegistry) -> None:
    stream = chat(client, stream=True, **USAGE)
    next(stream)
    del stream
    gc.collect()
    assert_cancelled_without_usage(registry)


def test_an_error_event_mid_stream_passes_through_and_is_unpriced(
        client: openai.OpenAI, fake: FakeLLM, registry: CollectorRegistry) -> None:
    fake.error_after = 1
    seen = []
    with pytest.raises(openai.APIError, match="server had an error"):
        for chunk in chat(client, stream=True, **USAGE):
            seen.append(chunk)
    assert len(seen) == 2
    assert calls(registry, "openai", MINI) == {"error": 1}
    assert errors(registry, "openai", MINI, "APIError") == 1
    assert unpriced(registry, "openai", MINI) == {"error": 1}  # its prompt was billed


def test_responses_api_stream_reads_usage_from_response_completed(
        client: openai.OpenAI, registry: CollectorRegistry) -> None:
    events = [e.type for e in client.responses.create(model=MINI, input="hi", stream=True)]
    assert events[-1] == "response.completed"
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI) == TOKENS
    assert cost(registry, "openai", MINI) == pytest.approx(COST)


# --- chat.completions.stream() ------------------------------------------------------------


def test_the_stream_helper_keeps_its_events_and_final_completion(
        client: openai.OpenAI, registry: CollectorRegistry, logs: LogCapture) -> None:
    with client.chat.completions.stream(model=MINI, messages=MESSAGES, **USAGE) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert kinds.count("content.delta") == 4 and kinds[-1] == "chunk"  # "" then 3 texts
    assert final.choices[0].message.content == "Hello world"
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI) == TOKENS  # from event.chunk.usage, once
    assert cost(registry, "openai", MINI) == pytest.approx(COST)
    assert ttft_count(registry, "openai", MINI) == 1
    assert len(logs.events("provider_call")) == 1


def test_the_stream_helpers_final_completion_alone_reads_the_stream(
        client: openai.OpenAI, registry: CollectorRegistry) -> None:
    with client.chat.completions.stream(model=MINI, messages=MESSAGES, **USAGE) as stream:
        assert stream.get_final_completion().choices[0].message.content == "Hello world"
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI) == TOKENS


def test_leaving_the_stream_helper_early_is_cancelled(
        client: openai.OpenAI, registry: CollectorRegistry) -> None:
    with client.chat.completions.stream(model=MINI, messages=MESSAGES, **USAGE) as stream:
        for event in stream:
            if event.type == "content.delta":
                break
    assert_cancelled_without_usage(registry)


# --- the adapter itself ---------------------------------------------------------------------


def test_instrumenting_twice_counts_once(client: openai.OpenAI,
                                         registry: CollectorRegistry) -> None:
    instrument_openai(client)
    chat(client)
    list(chat(client, stream=True, **USAGE))
    assert calls(registry, "openai", MINI) == {"ok": 2}
    assert all_provider_calls(registry) == 2


def test_the_registry_and_provider_name_can_be_chosen(fake: FakeLLM,
                                                      registry: CollectorRegistry) -> None:
    other = CollectorRegistry()
    with openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0) as made:
        chat(instrument_openai(made, provider="azure", registry=other))
    assert calls(other, "azure", MINI) == {"ok": 1}
    assert all_provider_calls(registry) == 0


def test_only_openai_clients_are_accepted() -> None:
    with pytest.raises(TypeError):
        instrument_openai(object())  # type: ignore[type-var]


def test_a_missing_sdk_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "instrument.adapters.openai")
    with pytest.raises(ImportError, match=r"pip install 'llm-instrument\[openai\]'"):
        importlib.import_module("instrument.adapters.openai")


# --- the async client -------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: under trio the SDK itself (uninstrumented too) drops its inner async
    generators unclosed after ``[DONE]``, which trio reports as ResourceWarnings."""
    return "asyncio"


@pytest.fixture
async def aclient(fake: FakeLLM) -> Any:
    fake.usage.reasoning = 30
    async with openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test",
                                  max_retries=0) as made:
        yield instrument_openai(made)


@pytest.mark.anyio
async def test_async_create_stream_and_helper(aclient: openai.AsyncOpenAI,
                                              registry: CollectorRegistry) -> None:
    answer = await aclient.chat.completions.create(model=MINI, messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello world"
    stream = await aclient.chat.completions.create(model=MINI, messages=MESSAGES, stream=True,
                                                   **USAGE)
    assert isinstance(stream, openai.AsyncStream)
    assert len([c async for c in stream]) == 6
    async with aclient.chat.completions.stream(model=MINI, messages=MESSAGES,
                                               **USAGE) as helper:
        final = await helper.get_final_completion()
    assert final.choices[0].message.content == "Hello world"
    assert calls(registry, "openai", MINI) == {"ok": 3}
    assert tokens(registry, "openai", MINI) == {k: 3 * v for k, v in TOKENS.items()}
    assert cost(registry, "openai", MINI) == pytest.approx(3 * COST)
    assert ttft_count(registry, "openai", MINI) == 2


@pytest.mark.anyio
async def test_async_stream_closed_early_and_with_exit(aclient: openai.AsyncOpenAI,
                                                       registry: CollectorRegistry) -> None:
    stream = await aclient.chat.completions.create(model=MINI, messages=MESSAGES, stream=True)
    await stream.__anext__()
    await stream.close()
    await stream.close()
    async with await aclient.chat.completions.create(model=MINI, messages=MESSAGES,
                                                     stream=True) as stream:
        await stream.__anext__()
    assert calls(registry, "openai", MINI) == {"cancelled": 2}
    assert unpriced(registry, "openai", MINI) == {"cancelled": 2}
    assert inflight(registry, "openai") == 0


@pytest.mark.anyio
async def test_async_task_cancellation_of_a_hanging_stream(
        aclient: openai.AsyncOpenAI, fake: FakeLLM, registry: CollectorRegistry) -> None:
    fake.hang_after = 1
    got: list[Any] = []

    async def consume() -> None:
        stream = await aclient.chat.completions.create(model=MINI, messages=MESSAGES,
                                                       stream=True)
        try:
            async for chunk in stream:
                got.append(chunk)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        while len(got) < 2:
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert calls(registry, "openai", MINI) == {"cancelled": 1}
    assert unpriced(registry, "openai", MINI) == {"cancelled": 1}
    assert errors(registry, "openai", MINI, "CancelledError") == 0
    assert inflight(registry, "openai") == 0


def test_asyncio_task_cancel_of_a_waiting_stream_is_cancelled(
        fake: FakeLLM, registry: CollectorRegistry) -> None:
    fake.hang_after = 0

    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test",
                                      max_retries=0) as made:
            client = instrument_openai(made)
            stream = await client.chat.completions.create(model=MINI, messages=MESSAGES,
                                                          stream=True)
            task = asyncio.ensure_future(stream.__anext__())
            await task  # the role chunk comes before the hang
            task = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await stream.close()

    asyncio.run(main())
    assert calls(registry, "openai", MINI) == {"cancelled": 1}


def test_a_bookkeeping_failure_never_breaks_the_call(
        client: openai.OpenAI, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch,
        expect_internal_errors: None) -> None:
    from instrument import _sdk

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("instrument bug")

    monkeypatch.setattr(_sdk, "ProviderCall", broken)
    assert chat(client).choices[0].message.content == "Hello world"
    assert len(list(chat(client, stream=True))) == 5
    with client.chat.completions.stream(model=MINI, messages=MESSAGES) as stream:
        assert stream.get_final_completion().choices[0].message.content == "Hello world"
    assert all_provider_calls(registry) == 0
    assert value(registry, "instrument_internal_errors_total", where="observer_start") == 3
