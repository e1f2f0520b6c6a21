"""The process-wide form: ``instrument_openai()`` / ``instrument_anthropic()`` without a client
instrument the SDK's classes, so every client counts, and together with the per-client form
each call still counts once. Real SDKs against the fake provider; figures as in
``test_openai.py`` and ``test_anthropic.py``."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from instrument.adapters.anthropic import instrument_anthropic, uninstrument_anthropic
from instrument.adapters.openai import instrument_openai, uninstrument_openai
from tests.adapters.sdk_helpers import all_provider_calls, calls, cost, fake, tokens
from tests.fakes.llm_server import FakeLLM
from tests.helpers import value

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

MESSAGES = [{"role": "user", "content": "hi"}]
MINI, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-latest"
USAGE = {"stream_options": {"include_usage": True}}
TOKENS = {"input": 1200, "output": 80, "cached_input": 1000}


@pytest.fixture
def classes() -> Iterator[None]:
    instrument_openai()
    instrument_openai()  # twice: still once
    instrument_anthropic()
    yield
    uninstrument_openai()
    uninstrument_anthropic()


def gpt(fake: FakeLLM, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=max_retries)


def every_method(client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MINI, messages=MESSAGES)
    assert len(list(client.chat.completions.create(model=MINI, messages=MESSAGES, stream=True,
                                                   **USAGE))) == 6
    with client.chat.completions.stream(model=MINI, messages=MESSAGES, **USAGE) as stream:
        assert stream.get_final_completion().choices[0].message.content == "Hello world"
    assert client.responses.create(model=MINI, input="hi").output_text == "Hello world"
    client.embeddings.create(model="text-embedding-3-small", input="hi")


@pytest.mark.usefixtures("classes")
def test_every_client_counts_without_instrumenting_it(fake: FakeLLM,
                                                      registry: CollectorRegistry) -> None:
    with gpt(fake) as client:
        every_method(client)
        client.with_options(timeout=5).chat.completions.create(model=MINI, messages=MESSAGES)
    assert calls(registry, "openai", MINI) == {"ok": 5}
    assert tokens(registry, "openai", MINI) == {k: 5 * v for k, v in TOKENS.items()}
    assert calls(registry, "openai", "text-embedding-3-small") == {"ok": 1}
    assert all_provider_calls(registry) == 6


@pytest.mark.parametrize("client_first", [True, False])
def test_both_forms_together_count_each_call_once(
        fake: FakeLLM, registry: CollectorRegistry, client_first: bool) -> None:
    with gpt(fake) as client, anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test",
                                                  max_retries=0) as claude:
        if client_first:
            instrument_openai(client)
            instrument_anthropic(claude)
        instrument_openai()
        instrument_anthropic()
        try:
            if not client_first:
                instrument_openai(client)
                instrument_anthropic(claude)
            every_method(client)
            # observed by one layer, not a proxy of a proxy: the SDK's stream is right under it
            stream = client.chat.completions.create(model=MINI, messages=MESSAGES, stream=True,
                                                    **USAGE)
            assert type(stream.__wrapped__) is openai.Stream
            assert len(list(stream)) == 6
            claude.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
            with claude.messages.stream(model=HAIKU, max_tokens=64, messages=MESSAGES) as s:
                assert s.get_final_message().content[0].text == "Hello world"
        finally:
            uninstrument_openai()
            uninstrument_anthropic()
    assert calls(registry, "openai", MINI) == {"ok": 5}
    assert tokens(registry, "openai", MINI) == {k: 5 * v for k, v in TOKENS.items()}
    # claude-3-5-haiku: (1200 * 0.8 + 1000 * 0.08 + 80 * 4.0) / 1e6 = 0.00136, twice
    assert calls(registry, "anthropic", HAIKU) == {"ok": 2}
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(2 * 0.00136)
    assert all_provider_calls(registry) == 8


def test_uninstrument_restores_the_classes(fake: FakeLLM, registry: CollectorRegistry) -> None:
    instrument_openai()
    uninstrument_openai()
    with gpt(fake) as bare, gpt(fake) as mine:
        instrument_openai(mine)
        bare.chat.completions.create(model=MINI, messages=MESSAGES)
        mine.chat.completions.create(model=MINI, messages=MESSAGES)
    assert all_provider_calls(registry) == 1  # the client instrumented by itself stays so


@pytest.mark.usefixtures("classes")
def test_class_form_counts_retries_and_headroom(fake: FakeLLM,
                                                registry: CollectorRegistry) -> None:
    fake.fail_next = [429]
    with gpt(fake, max_retries=1) as client:
        client.chat.completions.create(model=MINI, messages=MESSAGES)
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert value(registry, "provider_retries_total", provider="openai", model=MINI) == 1
    assert value(registry, "provider_ratelimit_remaining", provider="openai", model=MINI,
                 kind="requests") == 9999


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # as in test_openai.py: the SDK itself warns under trio


@pytest.mark.anyio
@pytest.mark.usefixtures("classes")
async def test_async_clients_count_too(fake: FakeLLM, registry: CollectorRegistry) -> None:
    async with openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test",
                                  max_retries=0) as client:
        await client.chat.completions.create(model=MINI, messages=MESSAGES)
        async with client.chat.completions.stream(model=MINI, messages=MESSAGES,
                                                  **USAGE) as stream:
            await stream.get_final_completion()
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test",
                                        max_retries=0) as claude:
        async with claude.messages.stream(model=HAIKU, max_tokens=64,
                                          messages=MESSAGES) as helper:
            assert (await helper.get_final_message()).content[0].text == "Hello world"
    assert calls(registry, "openai", MINI) == {"ok": 2}
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}
