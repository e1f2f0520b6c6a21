"""One provider call is counted once, whatever observes it: ``@track_provider``, the SDK
integration, the httpx transport, or any combination (issue 13, points 3 and 4).

With the real ``openai`` SDK (which accepts an ``httpx.Client``) against the fake
provider. Figures as in ``test_openai.py``: 1200 prompt tokens (1000 cached), 80
completion tokens (30 reasoning), gpt-4o-mini costs 0.000153 per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from instrument import trace_span, track_provider
from instrument._propagation import parse_traceparent
from instrument.adapters.httpx import instrument_client
from instrument.adapters.openai import instrument_openai
from tests.adapters.sdk_helpers import (
    all_provider_calls,
    calls,
    cost,
    fake,
    tokens,
    ttft_count,
    unpriced,
)
from tests.conftest import LogCapture
from tests.fakes.llm_server import FakeLLM
from tests.helpers import value

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

MESSAGES = [{"role": "user", "content": "hi"}]
MINI = "gpt-4o-mini"
COST = 0.000153
TOKENS = {"input": 1200, "output": 80, "cached_input": 1000, "reasoning": 30}
USAGE = {"stream_options": {"include_usage": True}}


def make_client(fake: FakeLLM, *, sdk: bool, transport: bool) -> openai.OpenAI:
    http = httpx.Client()
    if transport:
        instrument_client(http, providers={"127.0.0.1": "openai"})
    client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0,
                           http_client=http)
    return instrument_openai(client) if sdk else client


@pytest.fixture
def clients(fake: FakeLLM) -> Iterator[Any]:
    fake.usage.reasoning = 30
    made: list[openai.OpenAI] = []

    def build(*, sdk: bool = True, transport: bool = True) -> openai.OpenAI:
        made.append(make_client(fake, sdk=sdk, transport=transport))
        return made[-1]

    yield build
    for client in made:
        client.close()


def client_requests(registry: CollectorRegistry, fake: FakeLLM) -> float:
    host = fake.url.removeprefix("http://")
    return value(registry, "http_client_requests_total", host=host, method="POST",
                 status="200")


def assert_counted_once(registry: CollectorRegistry) -> None:
    assert all_provider_calls(registry) == 1
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI) == TOKENS
    assert cost(registry, "openai", MINI) == pytest.approx(COST)
    assert unpriced(registry, "openai", MINI) == {}


@pytest.mark.parametrize("sdk, transport", [(True, False), (False, True), (True, True)])
def test_a_decorated_function_calling_the_sdk_counts_once(
        clients: Any, registry: CollectorRegistry, sdk: bool, transport: bool) -> None:
    client = clients(sdk=sdk, transport=transport)

    @track_provider("openai")
    def answer(question: str, model: str = MINI) -> str | None:
        reply = client.chat.completions.create(model=model, messages=MESSAGES)
        return reply.choices[0].message.content  # the usage is not in the return value

    assert answer("hi") == "Hello world"
    if sdk:  # the SDK integration hands its usage to the decorated call
        assert_counted_once(registry)
    else:  # only the decorator counts; it sees no usage
        assert all_provider_calls(registry) == 1
        assert unpriced(registry, "openai", MINI) == {"no_usage": 1}


def test_a_decorated_generator_over_an_sdk_stream_counts_once(
        clients: Any, registry: CollectorRegistry) -> None:
    client = clients()

    @track_provider("openai")
    def stream(question: str, model: str = MINI) -> Iterator[str]:
        for chunk in client.chat.completions.create(model=model, messages=MESSAGES,
                                                    stream=True, **USAGE):
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    assert "".join(stream("hi")) == "Hello world"
    assert_counted_once(registry)
    assert ttft_count(registry, "openai", MINI) == 1


def test_sdk_integration_over_the_httpx_transport_counts_once_and_keeps_client_metrics(
        clients: Any, fake: FakeLLM, registry: CollectorRegistry, logs: LogCapture) -> None:
    client = clients()
    with trace_span("handler") as span:
        client.chat.completions.create(model=MINI, messages=MESSAGES)
    assert_counted_once(registry)
    assert client_requests(registry, fake) == 1
    sent = fake.last().headers
    (event,) = logs.events("provider_call")
    assert parse_traceparent(sent["traceparent"]) == (span.trace_id, event["span_id"])


def test_sdk_stream_over_the_transport_counts_once(clients: Any, fake: FakeLLM,
                                                   registry: CollectorRegistry) -> None:
    client = clients()
    assert len(list(client.chat.completions.create(model=MINI, messages=MESSAGES,
                                                   stream=True, **USAGE))) == 6
    assert_counted_once(registry)
    assert client_requests(registry, fake) == 1


# --- the httpx transport alone, under the SDK --------------------------------------------


def test_the_transport_alone_counts_a_stream_read_to_its_end_as_ok(
        clients: Any, registry: CollectorRegistry) -> None:
    client = clients(sdk=False)
    list(client.chat.completions.create(model=MINI, messages=MESSAGES, stream=True, **USAGE))
    # the SDK stops reading at [DONE], before the body's end: still a completed stream
    assert calls(registry, "openai", MINI) == {"ok": 1}
    assert tokens(registry, "openai", MINI)["input"] == 1200


def test_the_transport_alone_counts_an_abandoned_stream_as_cancelled(
        clients: Any, registry: CollectorRegistry) -> None:
    client = clients(sdk=False)
    stream = client.chat.completions.create(model=MINI, messages=MESSAGES, stream=True,
                                            **USAGE)
    next(stream)
    next(stream)
    stream.close()
    assert calls(registry, "openai", MINI) == {"cancelled": 1}
    assert unpriced(registry, "openai", MINI) == {"cancelled": 1}
    assert value(registry, "provider_inflight_requests", provider="openai") == 0


# --- Anthropic over an instrumented httpx2 client -------------------------------------------

HAIKU = "claude-3-5-haiku-latest"
# input 1200 + cache read 1000 + cache write 500; (1200 * 0.8 + 1000 * 0.08 + 500 * 1.0
# + 80 * 4.0) / 1e6 = 0.00186, as in test_anthropic.py
HAIKU_TOKENS = {"input": 2700, "output": 80, "cached_input": 1000, "cache_write": 500}


@pytest.fixture
def claude(fake: FakeLLM) -> Iterator[Any]:
    import anthropic
    import httpx2

    from instrument.adapters.anthropic import instrument_anthropic

    fake.usage.cache_write = 500
    made: list[Any] = []

    def build(*, sdk: bool = True) -> Any:
        http = instrument_client(httpx2.Client(), providers={"127.0.0.1": "anthropic"})
        client = anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0,
                                     http_client=http)
        made.append(instrument_anthropic(client) if sdk else client)
        return made[-1]

    yield build
    for client in made:
        client.close()


@pytest.mark.parametrize("sdk", [True, False])
def test_anthropic_over_httpx2_counts_once_with_both_figures_and_the_trace(
        claude: Any, fake: FakeLLM, registry: CollectorRegistry, sdk: bool) -> None:
    client = claude(sdk=sdk)
    with trace_span("handler") as span:
        with client.messages.stream(model=HAIKU, max_tokens=64, messages=MESSAGES) as stream:
            assert "".join(stream.text_stream) == "Hello world"
    assert all_provider_calls(registry) == 1
    assert calls(registry, "anthropic", HAIKU) == {"ok": 1}
    # the transport alone reads message_start (input, cache) and message_delta (output)
    assert tokens(registry, "anthropic", HAIKU) == HAIKU_TOKENS
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(0.00186)
    assert client_requests(registry, fake) == 1
    assert fake.last().headers["x-trace-id"] == span.trace_id


def test_anthropic_stream_abandoned_over_httpx2_alone_is_cancelled(
        claude: Any, registry: CollectorRegistry) -> None:
    client = claude(sdk=False)
    with client.messages.stream(model=HAIKU, max_tokens=64, messages=MESSAGES) as stream:
        for _ in stream.text_stream:
            break
    assert calls(registry, "anthropic", HAIKU) == {"cancelled": 1}
