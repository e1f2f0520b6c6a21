"""A fake LLM provider on 127.0.0.1 speaking OpenAI's and Anthropic's wire formats.

``serve_fake_llm()`` starts it on uvicorn in a thread on a free port and stops it
on the way out, pass or fail. The real ``openai`` and ``anthropic`` SDKs point
their ``base_url`` at it. It answers:

- ``POST /v1/chat/completions``: a ``chat.completion``, or with ``stream`` an SSE
  stream of ``chat.completion.chunk`` ending in ``data: [DONE]``, with a last
  usage chunk (no choices) when ``stream_options.include_usage`` is set;
- ``POST /v1/responses``: a ``response``, or the ``response.*`` event stream
  whose ``response.completed`` event carries the usage;
- ``POST /v1/embeddings``: floats, or base64 when ``encoding_format`` asks;
- ``POST /v1/messages``: an Anthropic ``message``, or the event stream
  ``message_start`` / ``content_block_start`` / ``ping`` / ``content_block_delta`` /
  ``content_block_stop`` / ``message_delta`` (usage) / ``message_stop``.

Usage figures, errors (429/500 with each provider's error body and a
``retry-after-ms: 1`` the SDKs' retries obey, or an error event half-way through
a stream), a stream that stops sending after a few chunks and extra response
headers are set per test on the ``FakeLLM`` object. Every request is recorded
with its headers and JSON body; every response carries the provider's
rate-limit headers (``x-ratelimit-*``, ``anthropic-ratelimit-*``; a 429 says no
requests remain).
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.helpers import serve_asgi

TEXT = ["Hel", "lo", " world"]
# what a provider answers with for a requested alias: its dated snapshot
SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06",
             "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022"}

OPENAI_ERRORS = {
    429: {"message": "Rate limit reached for gpt-4o-mini in organization org-fake on requests "
                     "per min (RPM): Limit 3, Used 3, Requested 1.",
          "type": "requests", "param": None, "code": "rate_limit_exceeded"},
    500: {"message": "The server had an error while processing your request. Sorry about that!",
          "type": "server_error", "param": None, "code": None},
}
ANTHROPIC_ERRORS = {
    429: {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your "
                                                 "per-minute rate limit"},
    500: {"type": "api_error", "message": "Internal server error"},
    529: {"type": "overloaded_error", "message": "Overloaded"},
}


@dataclass
class Received:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Usage:
    """The figures every answer reports (OpenAI's and Anthropic's fields are filled from it).

    For OpenAI ``input`` is ``prompt_tokens`` (it includes ``cached``); for Anthropic
    ``input`` is ``input_tokens`` (it excludes cache reads and writes).
    """

    input: int = 1200
    output: int = 80
    cached: int = 1000
    reasoning: int = 0
    cache_write: int = 0
    #: Anthropic: how many of the cache writes are 1-hour ones (the rest are 5-minute)
    cache_write_1h: int = 0


@dataclass
class FakeLLM:
    """The server's script and record, shared with the test."""

    url: str = ""
    usage: Usage = field(default_factory=Usage)
    #: HTTP status codes to answer the next requests with, in order
    fail_next: list[int] = field(default_factory=list)
    #: streams send this many content chunks, then an error event
    error_after: int | None = None
    #: streams send this many content chunks, then wait until released (or the server stops)
    hang_after: int | None = None
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    #: set when the client went away from a hanging stream
    disconnected: threading.Event = field(default_factory=threading.Event)
    #: added to (or replacing) every response's headers, e.g. malformed rate-limit values
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def last(self, path: str | None = None) -> Received:
        return [r for r in self.received if path is None or r.path == path][-1]

    async def _wait(self) -> None:
        # the stream has stopped sending: wait for the test, bounded so the server always stops
        with anyio.move_on_after(30):
            while not self.release.is_set():
                await anyio.sleep(0.01)

    # --- OpenAI ---------------------------------------------------------------------

    def _openai_usage(self) -> dict[str, Any]:
        u = self.usage
        return {"prompt_tokens": u.input, "completion_tokens": u.output,
                "total_tokens": u.input + u.output,
                "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    async def chat(self, request: Request) -> Response:
        body, failed = await self._start(request, "openai")
        if failed is not None:
            return failed
        model = SNAPSHOTS.get(body["model"], body["model"])
        head = {"id": "chatcmpl-fake", "created": 1_700_000_000, "model": model,
                "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            return JSONResponse({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(TEXT),
                                         "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
                "usage": self._openai_usage(), "service_tier": "default"},
                headers=self._openai_headers())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = {**head, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                "finish_reason": finish}]}
            if include_usage:
                out["usage"] = None
            return out

        async def events() -> AsyncIterator[bytes]:
            yield _data(chunk({"role": "assistant", "content": "", "refusal": None}))
            for n, text in enumerate(TEXT):
                if await self._interrupt(n, "openai"):
                    return
                yield _data(chunk({"content": text}))
            yield _data(chunk({}, "stop"))
            if include_usage:
                yield _data({**head, "object": "chat.completion.chunk", "choices": [],
                             "usage": self._openai_usage()})
            yield b"data: [DONE]\n\n"

        return self._stream(events(), self._openai_headers())

    async def responses(self, request: Request) -> Response:
        body, failed = await self._start(request, "openai")
        if failed is not None:
            return failed
        u = self.usage
        model = SNAPSHOTS.get(body["model"], body["model"])
        message = {"type": "message", "id": "msg_fake", "status": "completed",
                   "role": "assistant", "content": [
                       {"type": "output_text", "text": "".join(TEXT), "annotations": []}]}
        response: dict[str, Any] = {
            "id": "resp_fake", "object": "response", "created_at": 1_700_000_000,
            "status": "completed", "model": model, "output": [message],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": u.input, "output_tokens": u.output,
                      "total_tokens": u.input + u.output,
                      "input_tokens_details": {"cached_tokens": u.cached},
                      "output_tokens_details": {"reasoning_tokens": u.reasoning}}}
        if not body.get("stream"):
            return JSONResponse(response, headers=self._openai_headers())
        started = {**response, "status": "in_progress", "output": [], "usage": None}

        async def events() -> AsyncIterator[bytes]:
            seq = iter(range(1000))
            yield _event("response.created", {"type": "response.created",
                                              "sequence_number": next(seq),
                                              "response": started})
            for n, text in enumerate(TEXT):
                if await self._interrupt(n, "openai"):
                    return
                yield _event("response.output_text.delta", {
                    "type": "response.output_text.delta", "sequence_number": next(seq),
                    "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                    "delta": text, "logprobs": []})
            yield _event("response.completed", {"type": "response.completed",
                                                "sequence_number": next(seq),
                                                "response": response})

        return self._stream(events(), self._openai_headers())

    async def embeddings(self, request: Request) -> Response:
        body, failed = await self._start(request, "openai")
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vector = [0.25, -0.5, 0.125]
        encoded: Any = (base64.b64encode(struct.pack("<3f", *vector)).decode()
                        if body.get("encoding_format") == "base64" else vector)
        return JSONResponse({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": encoded}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": self.usage.input, "total_tokens": self.usage.input}},
            headers=self._openai_headers())

    def _openai_headers(self, refused: bool = False) -> dict[str, str]:
        return {"x-request-id": "req_fake", "openai-processing-ms": "12",
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-remaining-requests": "0" if refused else "9999",
                "x-ratelimit-limit-tokens": "2000000", "x-ratelimit-remaining-tokens": "1998800",
                "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "36ms",
                **self.extra_headers}

    # --- Anthropic ------------------------------------------------------------------

    def _anthropic_usage(self, output: int) -> dict[str, Any]:
        u = self.usage
        return {"input_tokens": u.input, "output_tokens": output,
                "cache_read_input_tokens": u.cached, "cache_creation_input_tokens": u.cache_write,
                "cache_creation": {"ephemeral_5m_input_tokens": u.cache_write - u.cache_write_1h,
                                   "ephemeral_1h_input_tokens": u.cache_write_1h},
                "service_tier": "standard"}

    async def messages(self, request: Request) -> Response:
        body, failed = await self._start(request, "anthropic")
        if failed is not None:
            return failed
        model = SNAPSHOTS.get(body["model"], body["model"])
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": "".join(TEXT)}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": self._anthropic_usage(self.usage.output)}
        if not body.get("stream"):
            return JSONResponse(message, headers=self._anthropic_headers())

        async def events() -> AsyncIterator[bytes]:
            start = {**message, "content": [], "stop_reason": None,
                     "usage": self._anthropic_usage(1)}
            yield _event("message_start", {"type": "message_start", "message": start})
            yield _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})
            yield _event("ping", {"type": "ping"})
            for n, text in enumerate(TEXT):
                if await self._interrupt(n, "anthropic"):
                    return
                yield _event("content_block_delta", {
                    "type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}})
            yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield _event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": self.usage.output}})
            yield _event("message_stop", {"type": "message_stop"})

        return self._stream(events(), self._anthropic_headers())

    def _anthropic_headers(self, refused: bool = False) -> dict[str, str]:
        return {"request-id": "req_fake",
                "anthropic-ratelimit-requests-limit": "4000",
                "anthropic-ratelimit-requests-remaining": "0" if refused else "3999",
                "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
                "anthropic-ratelimit-tokens-limit": "400000",
                "anthropic-ratelimit-tokens-remaining": "398800",
                "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:01Z",
                "anthropic-ratelimit-input-tokens-limit": "300000",
                "anthropic-ratelimit-input-tokens-remaining": "297300",
                "anthropic-ratelimit-output-tokens-limit": "100000",
                "anthropic-ratelimit-output-tokens-remaining": "99920",
                **self.extra_headers}

    # --- shared -----------------------------------------------------------------------

    async def _start(self, request: Request, provider: str
                     ) -> tuple[dict[str, Any], Response | None]:
        body = json.loads(await request.body())
        self.received.append(Received(request.url.path,
                                      {k.lower(): v for k, v in request.headers.items()}, body))
        if not self.fail_next:
            return body, None
        status = self.fail_next.pop(0)
        # the SDKs' retries wait what the server says: a millisecond keeps retry tests fast
        retry = {"retry-after": "0", "retry-after-ms": "1"}
        if provider == "openai":
            return body, JSONResponse({"error": OPENAI_ERRORS[status]}, status_code=status,
                                      headers={**self._openai_headers(status == 429), **retry})
        return body, JSONResponse({"type": "error", "error": ANTHROPIC_ERRORS[status],
                                   "request_id": "req_fake"}, status_code=status,
                                  headers={**self._anthropic_headers(status == 429), **retry})

    async def _interrupt(self, n: int, provider: str) -> bool:
        """Before content chunk ``n``: hang, or ask the caller to send an error event."""
        if self.hang_after is not None and n == self.hang_after:
            try:
                await self._wait()
            finally:
                if not self.release.is_set():
                    self.disconnected.set()
            return True
        return self.error_after is not None and n == self.error_after

    def _stream(self, events: AsyncIterator[bytes], headers: dict[str, str]) -> Response:
        error_after, provider = self.error_after, ("anthropic" if "request-id" in headers
                                                   else "openai")

        async def body() -> AsyncIterator[bytes]:
            async for chunk in events:
                yield chunk
            if error_after is not None and self.hang_after is None:
                if provider == "openai":
                    yield _data({"error": OPENAI_ERRORS[500]})
                else:
                    yield _event("error", {"type": "error", "error": ANTHROPIC_ERRORS[529]})

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/responses", self.responses, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
        ])


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\n".encode() + _data(payload)


@contextlib.contextmanager
def serve_fake_llm() -> Iterator[FakeLLM]:
    """The fake provider on uvicorn on 127.0.0.1, stopped on the way out, pass or fail."""
    fake = FakeLLM()
    with serve_asgi(fake.app(), timeout_graceful_shutdown=2) as url:
        fake.url = url
        try:
            yield fake
        finally:
            fake.release.set()  # a stream still hanging ends now, so the server can stop
