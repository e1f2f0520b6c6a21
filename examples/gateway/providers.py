"""Two LLM providers through the real ``openai`` SDK, tried in order: fallback on an early
failure.

Each provider is an ``openai.AsyncOpenAI`` client instrumented by
``instrument_openai`` (its calls are provider calls: tokens, cost, time to first
token, the SDK's own retries, rate-limit headroom) over an ``httpx.AsyncClient``
instrumented by ``instrument_client`` (client metrics; the SDK integration sends
the caller's ``X-Trace-ID``/``traceparent``). By default both are the local fake
LLM ("primary"/fast-1 and "backup"/steady-1). With ``OPENAI_API_KEY`` set, the
primary is the real OpenAI API instead (model ``OPENAI_MODEL``, default
gpt-4o-mini; base URL ``OPENAI_BASE_URL``), with the same code.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import httpx
import openai
from loguru import logger

from instrument import load_prices, mark_fallback
from instrument.adapters.httpx import instrument_client
from instrument.adapters.openai import instrument_openai

# USD per million tokens. The fake models are not in any price table, so the
# demo registers them; openai/gpt-4o-mini is priced by the installed tables.
load_prices({
    "primary/fast-1": {"input": 0.40, "cached_input": 0.10, "output": 1.60},
    "backup/steady-1": {"input": 3.00, "cached_input": 1.50, "output": 12.00},
})

Message = dict[str, str]

# What makes the gateway try the next provider: the SDK's errors (an error status once
# its own retries are spent, the network, a timeout). Anything else is a bug and propagates.
UPSTREAM_ERRORS = (openai.APIError,)


class Provider:
    """One provider and model, spoken to with the OpenAI SDK."""

    def __init__(self, name: str, model: str, base_url: str, *, api_key: str | None = None,
                 timeout: float = 2.5) -> None:
        self.name = name
        self.model = model
        # read= bounds the wait for headers and between chunks: a stuck upstream
        # becomes a timeout, and (after the SDK's one retry) the next provider gets it.
        self.http = instrument_client(httpx.AsyncClient())
        self.client = instrument_openai(openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "fake-key", max_retries=1,
            timeout=openai.Timeout(10.0, read=timeout), http_client=self.http), provider=name)

    async def stream(self, messages: list[Message]) -> AsyncGenerator[Any, None]:
        """The SDK's chunks; the integration reads the usage from the final one."""
        stream = await self.client.chat.completions.create(
            model=self.model, messages=messages, stream=True,
            stream_options={"include_usage": True})
        async with stream:
            async for chunk in stream:
                yield chunk

    async def complete(self, messages: list[Message]) -> Any:
        """The whole response (the SDK's ``ChatCompletion``)."""
        return await self.client.chat.completions.create(
            model=self.model, messages=messages)

    async def aclose(self) -> None:
        await self.client.close()
        await self.http.aclose()


def _text(chunk: Any) -> str:
    if not chunk.choices:  # the final usage chunk has none
        return ""
    return chunk.choices[0].delta.content or ""


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
                _fallback(provider, self._after(provider), exc)

    async def complete(self, messages: list[Message]) -> tuple[str, str]:
        """``(provider name, whole answer)``."""
        for provider in self.providers:
            try:
                reply = await provider.complete(messages)
                return provider.name, reply.choices[0].message.content or ""
            except UPSTREAM_ERRORS as exc:
                if provider is self.providers[-1]:
                    raise
                _fallback(provider, self._after(provider), exc)
        raise RuntimeError("no providers configured")

    def _after(self, provider: Provider) -> Provider:
        return self.providers[self.providers.index(provider) + 1]

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()


def _fallback(provider: Provider, to: Provider, exc: BaseException) -> None:
    """Counted in provider_fallbacks_total, and said in the gateway's own log."""
    mark_fallback(provider.name, to.name)
    logger.bind(event="gateway_fallback", provider=provider.name, to_provider=to.name,
                error_type=type(exc).__name__).warning(
        "{provider} failed ({error}), trying {to}",
        provider=provider.name, error=type(exc).__name__, to=to.name)


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
