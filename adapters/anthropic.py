"""Anthropic SDK adapter: one call instruments an ``Anthropic`` or ``AsyncAnthropic`` client.

Observed as provider calls, on that client object: ``messages.create`` (plain
and ``stream=True``) and the ``messages.stream()`` helper. What each records and
how streams end: ``docs/llm-sdks.md``.
"""

from __future__ import annotations

from typing import Any, TypeVar

try:
    import anthropic
except ImportError as exc:
    raise ImportError("instrument.adapters.anthropic needs the anthropic SDK: "
                      "pip install 'llm-instrument[anthropic]'") from exc

from prometheus_client import CollectorRegistry

from instrument._sdk import Target, observe_http, observe_method, observe_stream_helper

__all__ = ["instrument_anthropic"]

C = TypeVar("C", anthropic.Anthropic, anthropic.AsyncAnthropic)


def instrument_anthropic(client: C, *, provider: str = "anthropic",
                         registry: CollectorRegistry | None = None) -> C:
    """Observe ``client``'s messages (``create`` and ``stream()``); returns the client.

    Calling it again wraps nothing twice. Clients made from it later
    (``with_options``, ``copy``) are not instrumented: instrument each one.
    """
    if not isinstance(client, (anthropic.Anthropic, anthropic.AsyncAnthropic)):
        raise TypeError("instrument_anthropic expects an anthropic.Anthropic or AsyncAnthropic "
                        f"client, got {client!r}")
    target = Target(provider, registry, anthropic.Stream, anthropic.AsyncStream)
    messages: Any = client.messages
    observe_method(messages, "create", "messages", target)
    # stream() sends its own request, not through create: it is observed by itself
    observe_stream_helper(messages, "messages", target,
                          isinstance(client, anthropic.AsyncAnthropic))
    observe_http(client)
    return client
