"""Two LLM providers behind ``@track_provider``, tried in order: fallback on an early failure.

Each provider talks OpenAI's chat-completions protocol through an
``httpx.AsyncClient`` instrumented by ``instrument_client``, so every request
carries the caller's ``X-Trace-ID``/``traceparent``. By default both are the
local fake LLM ("primary"/fast-1 and "backup"/steady-1). With ``OPENAI_API_KEY``
set, the primary is the real OpenAI API instead (model ``OPENAI_MODEL``,
default gpt-4o-mini; base URL ``OPENAI_BASE_URL``), with the same code.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import httpx
from loguru import logger

from instrument import load_prices, track_provider
from instrument.adapters.httpx import instrument_client

# USD per million tokens. The fake models are not in the shipped table, so the
# demo registers them; openai/gpt-4o-mini is priced by the shipped table.
load_prices({
    "primary/fast-1": {"input": 0.40, "cached_input": 0.10, "output": 1.60},
    "backup/steady-1": {"input": 3.00, "cached_input": 1.50, "output": 12.00},
})

Message = dict[str, str]


class ProviderError(Exception):
    """The provider answered with an error status."""


class RateLimited(ProviderError):
    """HTTP 429: slow down, or try another provider."""


# What makes the gateway try the next provider: an error status, or the network
# (connection refused, read timeout, ...). Anything else is a bug and propagates.
UPSTREAM_ERRORS = (ProviderError, httpx.TransportError)


class Provider:
    """One provider and model, spoken to over OpenAI's chat-completions protocol."""

    def __init__(self, name: str, model: str, base_url: str, *, api_key: str | None = None,
                 timeout: float = 2.5) -> None:
        self.name = name
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read= bounds the wait for headers and between chunks: a stuck upstream
        # becomes a ReadTimeout, and the next provider gets the question.
        self.client = instrument_client(httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(10.0, read=timeout)))
        # Decorated per instance: the provider's name is fixed when decorating.
        self.stream: Callable[[list[Message]], AsyncGenerator[dict[str, Any], None]] = (
            track_provider(name, model)(self._stream))
        self.complete: Callable[[list[Message]], Any] = track_provider(name, model)(self._complete)

    async def _stream(self, messages: list[Message]) -> AsyncGenerator[dict[str, Any], None]:
        """The raw chunks; ``@track_provider`` reads the usage from the final one."""
        body = {"model": self.model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}}
        async with self.client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _error(self.name, response)
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue  # blank separators, comments
                data = line[len("data: "):]
                if data == "[DONE]":
                    return
                yield json.loads(data)

    async def _complete(self, messages: list[Message]) -> dict[str, Any]:
        """The whole response; ``@track_provider`` reads its ``usage``."""
        body = {"model": self.model, "messages": messages}
        response = await self.client.post("/chat/completions", json=body)
        if response.status_code >= 400:
            raise _error(self.name, response)
        result: dict[str, Any] = response.json()
        return result

    async def aclose(self) -> None:
        await self.client.aclose()


def _error(name: str, response: httpx.Response) -> ProviderError:
    kind = RateLimited if response.status_code == 429 else ProviderError
    return kind(f"{name} answered HTTP {response.status_code}")


def _text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices")
    if not choices:  # the final usage chunk has none
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""


class LLM:
    """The providers in order of preference.

    A provider that fails before its first token is skipped for the next one;
    once tokens have gone to the user, a failure propagates (they cannot be unsent).
    """

    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers

    async def stream(self, messages: list[Message]) -> AsyncGenerator[tuple[str, str], None]:
        """``(provider name, text)`` pieces of the answer, as they arrive."""
        for provider in self.providers:
            started = False
            try:
                async with aclosing(provider.stream(messages)) as chunks:
                    async for chunk in chunks:
                        text = _text(chunk)
                        if text:
                            started = True
                            yield provider.name, text
                return
            except UPSTREAM_ERRORS as exc:
                if started or provider is self.providers[-1]:
                    raise
                _log_fallback(provider, exc)

    async def complete(self, messages: list[Message]) -> tuple[str, str]:
        """``(provider name, whole answer)``."""
        for provider in self.providers:
            try:
                reply = await provider.complete(messages)
                return provider.name, reply["choices"][0]["message"]["content"]
            except UPSTREAM_ERRORS as exc:
                if provider is self.providers[-1]:
                    raise
                _log_fallback(provider, exc)
        raise RuntimeError("no providers configured")

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()


def _log_fallback(provider: Provider, exc: BaseException) -> None:
    logger.bind(event="provider_fallback", provider=provider.name,
                error_type=type(exc).__name__).warning(
        "{provider} failed ({error}), trying the next provider",
        provider=provider.name, error=type(exc).__name__)


def from_env(fake_llm_url: str) -> LLM:
    """The real OpenAI API first when ``OPENAI_API_KEY`` is set, else the fake primary."""
    api_key = os.environ.get("OPENAI_API_KEY")
    if api_key:
        primary = Provider("openai", os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
                           os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
                           api_key=api_key, timeout=30.0)
    else:
        primary = Provider("primary", "fast-1", fake_llm_url)
    return LLM([primary, Provider("backup", "steady-1", fake_llm_url)])
