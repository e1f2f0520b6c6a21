"""Retries, rate-limit headroom and fallbacks (issue 13), with the real SDKs retrying by
themselves (``max_retries``) against the fake provider answering 429/500, then 200."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from instrument import mark_fallback, track_provider
from instrument._attempts import read_ratelimits
from instrument.adapters.anthropic import instrument_anthropic
from instrument.adapters.openai import instrument_openai
from tests.adapters.sdk_helpers import all_provider_calls, calls, errors, fake, only
from tests.conftest import LogCapture
from tests.fakes.llm_server import FakeLLM
from tests.helpers import value

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

MESSAGES = [{"role": "user", "content": "hi"}]
MINI = "gpt-4o-mini"
HAIKU = "claude-3-5-haiku-latest"


def retries(registry: CollectorRegistry, provider: str, model: str) -> float:
    return value(registry, "provider_retries_total", provider=provider, model=model)


def headroom(registry: CollectorRegistry, provider: str, model: str) -> dict[str, Any]:
    """``{kind: (remaining, limit)}`` for every kind that has a gauge."""
    out = {}
    for kind in ("requests", "tokens", "input_tokens", "output_tokens"):
        labels = {"provider": provider, "model": model, "kind": kind}
        pair = (registry.get_sample_value("provider_ratelimit_remaining", labels),
                registry.get_sample_value("provider_ratelimit_limit", labels))
        if pair != (None, None):
            out[kind] = pair
    return out


def openai_client(fake: FakeLLM, max_retries: int) -> openai.OpenAI:
    return instrument_openai(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test",
                                           max_retries=max_retries))


def test_openai_retries_429_and_500_then_ok_count_two_retries_one_call(
        fake: FakeLLM, registry: CollectorRegistry, logs: LogCapture) -> None:
    fake.fail_next = [429, 500]
    with openai_client(fake, max_retries=2) as client:
        answer = client.chat.completions.create(model=MINI, messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello world"
    assert len(fake.received) == 3  # three HTTP attempts...
    assert calls(registry, "openai", MINI) == {"ok": 1}  # ...one provider call
    assert retries(registry, "openai", MINI) == 2
    assert all_provider_calls(registry) == 1
    assert only(logs.events("provider_call"))["retries"] == 2
    # the latest response's headers: the 200's, not the 429's "0 remaining"
    assert headroom(registry, "openai", MINI) == {"requests": (9999, 10000),
                                                  "tokens": (1998800, 2000000)}


def test_openai_retries_exhausted_raise_unchanged_and_show_no_headroom_left(
        fake: FakeLLM, registry: CollectorRegistry) -> None:
    fake.fail_next = [500, 429]
    with openai_client(fake, max_retries=1) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MINI, messages=MESSAGES)
    assert len(fake.received) == 2
    assert calls(registry, "openai", MINI) == {"error": 1}
    assert errors(registry, "openai", MINI, "RateLimitError") == 1
    assert retries(registry, "openai", MINI) == 1
    assert headroom(registry, "openai", MINI)["requests"] == (0, 10000)


def test_a_call_without_retries_adds_no_retry_series(fake: FakeLLM,
                                                     registry: CollectorRegistry) -> None:
    with openai_client(fake, max_retries=2) as client:
        client.chat.completions.create(model=MINI, messages=MESSAGES)
        stream = client.chat.completions.create(model=MINI, messages=MESSAGES, stream=True)
        assert len(list(stream)) == 5
    assert calls(registry, "openai", MINI) == {"ok": 2}
    assert registry.get_sample_value("provider_retries_total",
                                     {"provider": "openai", "model": MINI}) is None
    assert headroom(registry, "openai", MINI)["requests"] == (9999, 10000)


def test_a_stream_retried_before_its_first_chunk(fake: FakeLLM,
                                                 registry: CollectorRegistry) -> None:
    fake.fail_next = [500]
    with openai_client(fake, max_retries=1) as client:
        chunks = list(client.chat.completions.create(model=MINI, messages=MESSAGES,
                                                     stream=True))
    assert len(chunks) == 5
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert retries(registry, "openai", MINI) == 1


def test_anthropic_create_and_stream_helper_retries_and_four_headroom_kinds(
        fake: FakeLLM, registry: CollectorRegistry) -> None:
    with instrument_anthropic(anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test",
                                                  max_retries=2)) as client:
        fake.fail_next = [429, 500]
        client.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
        fake.fail_next = [500]
        with client.messages.stream(model=HAIKU, max_tokens=64, messages=MESSAGES) as stream:
            assert stream.get_final_message().content[0].text == "Hello world"
    assert len(fake.received) == 5
    assert calls(registry, "anthropic", HAIKU) == {"ok": 2}
    assert retries(registry, "anthropic", HAIKU) == 3
    assert headroom(registry, "anthropic", HAIKU) == {
        "requests": (3999, 4000), "tokens": (398800, 400000),
        "input_tokens": (297300, 300000), "output_tokens": (99920, 100000)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # as in test_openai.py: the SDK itself warns under trio


@pytest.mark.anyio
async def test_the_async_clients_retries(fake: FakeLLM, registry: CollectorRegistry) -> None:
    fake.fail_next = [500]
    async with instrument_openai(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test",
                                                    max_retries=1)) as client:
        await client.chat.completions.create(model=MINI, messages=MESSAGES)
    fake.fail_next = [429]
    async with instrument_anthropic(anthropic.AsyncAnthropic(
            base_url=fake.url, api_key="sk-ant-test", max_retries=1)) as claude:
        await claude.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
    assert retries(registry, "openai", MINI) == 1
    assert retries(registry, "anthropic", HAIKU) == 1
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}


def test_sdk_calls_inside_a_decorated_call_add_their_retries_to_it_once(
        fake: FakeLLM, registry: CollectorRegistry) -> None:
    with openai_client(fake, max_retries=2) as client:

        @track_provider("openai")
        def agent(model: str = MINI) -> str:
            first = client.chat.completions.create(model=model, messages=MESSAGES)
            fake.fail_next = [429]
            second = client.chat.completions.create(model=model, messages=MESSAGES)
            return (first.choices[0].message.content or "") + (
                second.choices[0].message.content or "")

        assert agent() == "Hello worldHello world"
    assert all_provider_calls(registry) == 1
    assert retries(registry, "openai", MINI) == 1  # two SDK calls, one of them retried once


def test_bad_rate_limit_values_are_ignored_never_raised(fake: FakeLLM,
                                                        registry: CollectorRegistry) -> None:
    fake.extra_headers = {"x-ratelimit-remaining-requests": "lots",
                          "x-ratelimit-limit-requests": "-1",
                          "x-ratelimit-remaining-tokens": "nan",
                          "x-ratelimit-limit-tokens": "1" * 40}
    with openai_client(fake, max_retries=0) as client:
        assert client.chat.completions.create(
            model=MINI, messages=MESSAGES).choices[0].message.content == "Hello world"
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert headroom(registry, "openai", MINI) == {}


@pytest.mark.parametrize("headers, expected", [
    ({"X-RateLimit-Remaining-Requests": "12", "x-ratelimit-limit-tokens": "1e3"},
     {("requests", "remaining"): 12.0, ("tokens", "limit"): 1000.0}),
    ({"x-ratelimit-remaining-requests": "", "x-ratelimit-reset-requests": "6ms",
      "anthropic-ratelimit-tokens-remaining": "inf", "content-type": "text/plain"}, {}),
    ({"anthropic-ratelimit-output-tokens-remaining": " 7 "}, {("output_tokens", "remaining"): 7}),
])
def test_reading_rate_limit_headers(headers: dict[str, str],
                                    expected: dict[tuple[str, str], float]) -> None:
    assert read_ratelimits(headers) == expected
    clients = [m for m in map(_maybe, ("httpx", "httpx2")) if m is not None]
    assert clients  # the SDKs bring one of them
    for client in clients:  # the Headers their responses hand the hook (read as raw bytes)
        assert read_ratelimits(client.Headers(headers)) == expected, client.__name__


def _maybe(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        return None


def test_mark_fallback_counts_and_logs(registry: CollectorRegistry, logs: LogCapture) -> None:
    mark_fallback("openai", "anthropic")
    mark_fallback("openai", "anthropic")
    assert value(registry, "provider_fallbacks_total", provider="openai",
                 to_provider="anthropic") == 2
    event = logs.events("provider_fallback")[0]
    assert (event["provider"], event["to_provider"]) == ("openai", "anthropic")
    with pytest.raises(ValueError):
        mark_fallback("", "anthropic")
    other = CollectorRegistry()
    mark_fallback("azure", "openai", registry=other)
    assert value(other, "provider_fallbacks_total", provider="azure", to_provider="openai") == 1
