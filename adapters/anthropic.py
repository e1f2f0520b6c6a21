"""Anthropic SDK adapter: one call instruments an ``Anthropic`` or ``AsyncAnthropic`` client,
or every client of the process.

Observed as provider calls: ``messages.create`` (plain and ``stream=True``) and
the ``messages.stream()`` helper. What each records and how streams end:
``docs/llm-sdks.md``.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

try:
    import anthropic
    from anthropic.resources import AsyncMessages, Messages
except ImportError as exc:
    raise ImportError("instrument.adapters.anthropic needs the anthropic SDK: "
                      "pip install 'llm-instrument[anthropic]'") from exc

from prometheus_client import CollectorRegistry

from instrument._sdk import (
    Target,
    observe_class,
    observe_http,
    observe_method,
    observe_stream_helper,
    restore_classes,
)

__all__ = ["instrument_anthropic", "uninstrument_anthropic"]

C = TypeVar("C", anthropic.Anthropic, anthropic.AsyncAnthropic)


@overload
def instrument_anthropic(client: C, *, provider: str = ...,
                         registry: CollectorRegistry | None = ...) -> C: ...


@overload
def instrument_anthropic(client: None = None, *, provider: str = ...,
                         registry: CollectorRegistry | None = ...) -> None: ...


def instrument_anthropic(client: C | None = None, *, provider: str = "anthropic",
                         registry: CollectorRegistry | None = None) -> C | None:
    """Observe ``client``'s messages (``create`` and ``stream()``); returns the client.

    Calling it again wraps nothing twice. Clients made from it later
    (``with_options``, ``copy``) are not instrumented: instrument each one.
    Without a client, the SDK's classes are instrumented for the whole process
    (every client, made before or after; the first call's settings hold), until
    ``uninstrument_anthropic()``. Both forms together still count each call once.
    """
    target = Target(provider, registry, anthropic.Stream, anthropic.AsyncStream)
    if client is None:
        for cls, asynchronous in ((Messages, False), (AsyncMessages, True)):
            observe_class(cls, "create", "messages", target)
            observe_class(cls, "stream", "messages", target, asynchronous)
        return None
    if not isinstance(client, (anthropic.Anthropic, anthropic.AsyncAnthropic)):
        raise TypeError("instrument_anthropic expects an anthropic.Anthropic or AsyncAnthropic "
                        f"client, got {client!r}")
    messages: Any = client.messages
    observe_method(messages, "create", "messages", target)
    # stream() sends its own request, not through create: it is observed by itself
    observe_stream_helper(messages, "messages", target,
                          isinstance(client, anthropic.AsyncAnthropic))
    observe_http(client)
    return client


def uninstrument_anthropic() -> None:
    """Undo ``instrument_anthropic()`` without a client (clients instrumented one by one
    stay)."""
    restore_classes((Messages, AsyncMessages))
