"""OpenAI SDK adapter: one call instruments an ``OpenAI`` or ``AsyncOpenAI`` client, or every
client of the process.

Observed as provider calls: ``chat.completions.create`` (plain and
``stream=True``), ``chat.completions.stream()``, ``responses.create`` (plain and
``stream=True``) and ``embeddings.create``. What each records and how streams
end: ``docs/llm-sdks.md``.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

try:
    import openai
    from openai.resources import AsyncEmbeddings, Embeddings
    from openai.resources.chat import AsyncCompletions, Completions
    from openai.resources.responses import AsyncResponses, Responses
except ImportError as exc:
    raise ImportError("instrument.adapters.openai needs the openai SDK: "
                      "pip install 'llm-instrument[openai]'") from exc

from prometheus_client import CollectorRegistry

from instrument._sdk import (
    Target,
    observe_class,
    observe_http,
    observe_method,
    observe_stream_helper,
    restore_classes,
)

__all__ = ["instrument_openai", "uninstrument_openai"]

C = TypeVar("C", openai.OpenAI, openai.AsyncOpenAI)
_CLASSES = (Completions, AsyncCompletions, Responses, AsyncResponses, Embeddings,
            AsyncEmbeddings)


@overload
def instrument_openai(client: C, *, provider: str = ...,
                      registry: CollectorRegistry | None = ...) -> C: ...


@overload
def instrument_openai(client: None = None, *, provider: str = ...,
                      registry: CollectorRegistry | None = ...) -> None: ...


def instrument_openai(client: C | None = None, *, provider: str = "openai",
                      registry: CollectorRegistry | None = None) -> C | None:
    """Observe ``client``'s chat completions, responses and embeddings; returns the client.

    Calling it again wraps nothing twice. Clients made from it later
    (``with_options``, ``copy``) are not instrumented: instrument each one.
    Without a client, the SDK's classes are instrumented for the whole process
    (every client, made before or after; the first call's settings hold), until
    ``uninstrument_openai()``. Both forms together still count each call once.
    """
    target = Target(provider, registry, openai.Stream, openai.AsyncStream)
    if client is None:
        for chat, asynchronous in ((Completions, False), (AsyncCompletions, True)):
            observe_class(chat, "create", "chat", target)
            observe_class(chat, "stream", "chat", None, asynchronous)
        for responses in (Responses, AsyncResponses):
            observe_class(responses, "create", "responses", target)
        for embeddings in (Embeddings, AsyncEmbeddings):
            observe_class(embeddings, "create", "embeddings", target)
        return None
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise TypeError(f"instrument_openai expects an openai.OpenAI or AsyncOpenAI client, "
                        f"got {client!r}")
    completions: Any = client.chat.completions
    observe_method(completions, "create", "chat", target)
    # stream() sends its request through the create observed above
    observe_stream_helper(completions, "chat", None, isinstance(client, openai.AsyncOpenAI))
    observe_method(client.responses, "create", "responses", target)
    observe_method(client.embeddings, "create", "embeddings", target)
    observe_http(client)
    return client


def uninstrument_openai() -> None:
    """Undo ``instrument_openai()`` without a client (clients instrumented one by one stay)."""
    restore_classes(_CLASSES)
