"""Usage examples checked by mypy (strict): decorated callables keep their types.

Not run by pytest; ``mypy tests/typing/api.py`` fails if a decorator loses a
signature, a return type or the kind of a callable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from instrument import (
    HEARTBEAT,
    get_trace_id,
    record_cache,
    record_usage,
    track_cache,
    track_provider,
    track_sse,
)


@track_provider("openai")
def complete(prompt: str, *, model: str = "gpt-4o-mini") -> dict[str, Any]:
    ok: bool = record_usage(input_tokens=10, output_tokens=2, cached_input_tokens=0,
                            cost_usd=None, api_cost_usd=0.0)
    return {"text": prompt, "recorded": ok}


@track_provider("anthropic", "claude-3-5-haiku", operation="messages", log_io=True)
async def acomplete(prompt: str, max_tokens: int = 16) -> str:
    return prompt


@track_provider("openai", "gpt-4o")
def stream(prompt: str) -> Iterator[str]:
    yield prompt


@track_provider("openai", "gpt-4o")
async def astream(prompt: str) -> AsyncIterator[str]:
    yield prompt


@track_sse("/events", heartbeat=15.0)
async def events(topic: str) -> AsyncIterator[object]:
    yield HEARTBEAT
    yield f"data: {topic} {get_trace_id()}\n\n"


@track_sse("/sync-events", heartbeat_item=b": ping\n\n")
def sync_events() -> Iterator[bytes]:
    yield b"data: 1\n\n"


@track_cache("answers")
def lookup(key: str) -> str | None:
    return None


@track_cache("answers", hit=lambda value: bool(value))
async def alookup(key: str) -> list[str]:
    return []


class Client:
    @track_provider("openai")
    def method(self, prompt: str, *, model: str) -> str:
        return prompt

    @classmethod
    @track_provider("openai")
    async def klass(cls, prompt: str) -> str:
        return prompt

    @staticmethod
    @track_cache("client")
    def static(key: str) -> int | None:
        return None


async def use() -> None:
    text: dict[str, Any] = complete("hi", model="o3")
    answer: str = await acomplete("hi", max_tokens=4)
    chunks: list[str] = list(stream("hi"))
    achunks: list[str] = [chunk async for chunk in astream("hi")]
    body: list[object] = [item async for item in events("news")]
    raw: list[bytes] = list(sync_events())
    cached: str | None = lookup("k")
    acached: list[str] = await alookup("k")
    client = Client()
    by_method: str = client.method("hi", model="gpt-4o")
    by_class: str = await Client.klass("hi")
    by_static: int | None = Client.static("k")
    record_cache("answers", hit=cached is not None, duration=0.001)
    print(text, answer, chunks, achunks, body, raw, cached, acached, by_method, by_class,
          by_static)


# the decorated objects still have the types of the functions they wrap
as_function: Callable[[str], Awaitable[str]] = acomplete
as_lookup: Callable[[str], str | None] = lookup
as_stream: Callable[[str], Iterator[str]] = stream
