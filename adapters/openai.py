"""OpenAI SDK adapter: one call instruments an ``OpenAI`` or ``AsyncOpenAI`` client.

Observed as provider calls, on that client object: ``chat.completions.create``
(plain and ``stream=True``), ``chat.completions.stream()``, ``responses.create``
(plain and ``stream=True``) and ``embeddings.create``. What each records and how
streams end: ``docs/llm-sdks.md``.
"""

from __future__ import annotations

from typing import Any, TypeVar

try:
    import openai
except ImportError as exc:
    raise ImportError("instrument.adapters.openai needs the openai SDK: "
                      "pip install 'llm-instrument[openai]'") from exc

from prometheus_client import CollectorRegistry

from instrument._sdk import Target, observe_http, observe_method, observe_stream_helper

__all__ = ["instrument_openai"]

C = TypeVar("C", openai.OpenAI, openai.AsyncOpenAI)


def instrument_openai(client: C, *, provider: str = "openai",
                      registry: CollectorRegistry | None = None) -> C:
    """Observe ``client``'s chat completions, responses and embeddings; returns the client.

    Calling it again wraps nothing twice. Clients made from it later
    (``with_options``, ``copy``) are not instrumented: instrument each one.
    """
    if not isinstance(client, (openai.OpenAI, openai.AsyncOpenAI)):
        raise TypeError(f"instrument_openai expects an openai.OpenAI or AsyncOpenAI client, "
                        f"got {client!r}")
    target = Target(provider, registry, openai.Stream, openai.AsyncStream)
    completions: Any = client.chat.completions
    observe_method(completions, "create", "chat", target)
    # stream() sends its request through the create observed above
    observe_stream_helper(completions, "chat", None, isinstance(client, openai.AsyncOpenAI))
    observe_method(client.responses, "create", "responses", target)
    observe_method(client.embeddings, "create", "embeddings", target)
    observe_http(client)
    return client
