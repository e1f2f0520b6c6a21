"""The fake provider itself, read by the real SDKs uninstrumented: the wire formats hold."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anthropic
import openai
import pytest

from tests.fakes.llm_server import FakeLLM, serve_fake_llm

T = TypeVar("T")
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with serve_fake_llm() as server:
        yield server


@pytest.fixture
def track() -> Iterator[Callable[[T], T]]:
    """Closes every SDK client the test made (their sockets must not outlive it)."""
    made: list[Any] = []

    def keep(client: T) -> T:
        made.append(client)
        return client

    yield keep
    for client in made:
        client.close()


def test_openai_chat_completions_plain_and_streamed_with_the_usage_chunk(
        fake: FakeLLM, track: Any) -> None:
    fake.usage.reasoning = 30
    client = track(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0))
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.model == "gpt-4o-mini-2024-07-18"
    assert answer.choices[0].message.content == "Hello world"
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 1000
    assert answer.usage.completion_tokens_details is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens == 30
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello world")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 1200
    without = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                  stream=True))
    assert all(c.usage is None and c.choices for c in without)


def test_openai_responses_embeddings_and_errors(fake: FakeLLM, track: Any) -> None:
    client = track(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0))
    assert client.responses.create(model="gpt-4o-mini", input="hi").output_text == "Hello world"
    events = [e.type for e in client.responses.create(model="gpt-4o-mini", input="hi",
                                                      stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    embedded = client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert embedded.data[0].embedding == [0.25, -0.5, 0.125]
    fake.fail_next = [429, 500]  # a 429 says no requests remain
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    fake.error_after = 1
    with pytest.raises(openai.APIError, match="server had an error"):
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                            stream=True))


def test_anthropic_messages_plain_streamed_and_errors(fake: FakeLLM, track: Any) -> None:
    fake.usage.cache_write = 500
    client = track(anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0))
    message = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                                     messages=MESSAGES)
    assert message.model == "claude-3-5-haiku-20241022"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.cache_creation_input_tokens) == (1200, 1000, 500)
    events = [e.type for e in client.messages.create(
        model="claude-3-5-haiku-latest", max_tokens=64, messages=MESSAGES, stream=True)]
    assert events == ["message_start", "content_block_start", "content_block_delta",
                      "content_block_delta", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"]
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                                messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Hello world"
    assert stream.get_final_message().usage.output_tokens == 80
    fake.fail_next = [429]
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                               messages=MESSAGES)
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    fake.error_after = 1
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        list(client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                                    messages=MESSAGES, stream=True))


def test_the_server_records_headers_and_stops_on_the_way_out() -> None:
    with serve_fake_llm() as fake:
        with openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                           extra_headers={"X-Trace-ID": "trace-1"})
        assert fake.last("/v1/chat/completions").headers["x-trace-id"] == "trace-1"
        assert fake.last().body["model"] == "gpt-4o-mini"
        port = int(fake.url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
