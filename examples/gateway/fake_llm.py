"""A local stand-in for an OpenAI-compatible provider: POST /v1/chat/completions.

Streams tokens (``stream: true``) with a realistic time to first token and
per-token delays, reports usage (with cached prompt tokens once a prompt prefix
repeats) and misbehaves on purpose, so the gateway's metrics have something to
show. Each model has its own speed; fast-1 also has short outages (every
request fails with 503), and steady-1 a small quota (429 past a few requests a
second), which is what a backup model hit by a whole fallback wave runs into.
Environment knobs (read when the module is imported):

    FAKE_LLM_ERROR_RATE      share of requests answered 500 or 429 (default 0.10)
    FAKE_LLM_TIMEOUT_RATE    share of requests that hang past the client's timeout (0.03)
    FAKE_LLM_OUTAGE_EVERY    seconds between fast-1's outages (10; 0 = none)
    FAKE_LLM_OUTAGE_SECONDS  how long each outage lasts (1.5)
    FAKE_LLM_QUOTA           requests a second steady-1 accepts (3)

It logs the ``X-Trace-ID`` it receives on every request: that is how the demo
shows the gateway's trace going out over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from loguru import logger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ERROR_RATE = float(os.environ.get("FAKE_LLM_ERROR_RATE", "0.10"))
TIMEOUT_RATE = float(os.environ.get("FAKE_LLM_TIMEOUT_RATE", "0.03"))
OUTAGE_EVERY = float(os.environ.get("FAKE_LLM_OUTAGE_EVERY", "10"))
OUTAGE_SECONDS = float(os.environ.get("FAKE_LLM_OUTAGE_SECONDS", "1.5"))
QUOTA = float(os.environ.get("FAKE_LLM_QUOTA", "3"))
HANG_SECONDS = 30.0  # far past any client timeout; ends early when the client gives up


@dataclass(frozen=True)
class Model:
    first_token: tuple[float, float]  # seconds to the first token: a uniform range
    per_token: tuple[float, float]  # seconds between tokens
    outages: bool = False  # fails with 503 during the periodic outages
    per_second: float | None = None  # quota: 429 past this many requests a second


MODELS = {
    "fast-1": Model((0.15, 0.35), (0.015, 0.025), outages=True),
    "steady-1": Model((0.30, 0.50), (0.025, 0.040), per_second=QUOTA),
}
DEFAULT_MODEL = Model((0.25, 0.45), (0.020, 0.035))

SENTENCES = [
    "Start from the question the user actually asked and the sources retrieved for it.",
    "Latency is best read as a distribution: the p95 tells you what slow users feel.",
    "Time to first token matters more than total time for a streamed answer.",
    "Cached prompt tokens are billed at a lower rate, so stable prefixes save money.",
    "A fallback provider keeps answers flowing when the primary one fails.",
    "Every log line carries the trace ID, so one request can be followed end to end.",
    "Heartbeats keep idle proxies from closing a stream while the model is thinking.",
    "Clients that leave early should be counted apart from real errors.",
]

_started = time.monotonic()
_seen_prefixes: set[str] = set()  # prompt prefixes already "in the provider's cache"
_recent: dict[str, deque[float]] = defaultdict(deque)  # request times, for the quota


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the usual rule of thumb: ~4 characters per token


def _usage(model: str, messages: list[dict[str, Any]], completion_tokens: int) -> dict[str, Any]:
    """Usage as OpenAI reports it: cached tokens are the longest prompt prefix seen before."""
    prompt_tokens, cached, prefix = 0, 0, hashlib.sha256(model.encode())
    for message in messages:
        prompt_tokens += _tokens(str(message.get("content", "")))
        prefix.update(json.dumps(message, sort_keys=True).encode())
        key = prefix.hexdigest()
        if key in _seen_prefixes:
            cached = prompt_tokens
        elif len(_seen_prefixes) < 100_000:
            _seen_prefixes.add(key)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _answer(messages: list[dict[str, Any]]) -> list[str]:
    """A plausible answer, the same for the same question: a list of tokens."""
    question = str(messages[-1].get("content", "")) if messages else ""
    rng = random.Random(hashlib.sha256(question.encode()).digest())
    words = " ".join(rng.sample(SENTENCES, k=rng.randint(3, 5))).split()
    return [words[0]] + [" " + word for word in words[1:]]


def _in_outage(spec: Model) -> bool:
    if not spec.outages or OUTAGE_EVERY <= 0:
        return False
    elapsed = time.monotonic() - _started - OUTAGE_EVERY / 2  # the first one half-way in
    return elapsed >= 0 and elapsed % OUTAGE_EVERY < OUTAGE_SECONDS


def _over_quota(model: str, spec: Model) -> bool:
    if spec.per_second is None:
        return False
    now, recent = time.monotonic(), _recent[model]
    while recent and recent[0] < now - 1.0:
        recent.popleft()
    if len(recent) >= spec.per_second:
        return True
    recent.append(now)
    return False


def _error(status: int, kind: str, message: str) -> Response:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


async def _hang(request: Request) -> Response:
    """Answer nothing until the client gives up (its read timeout), as a stuck upstream does."""
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.1)
    return _error(504, "timeout", "upstream took too long")


async def chat_completions(request: Request) -> Response:
    body = await request.json()
    model = str(body.get("model", "unknown"))
    messages = body.get("messages") or []
    stream = bool(body.get("stream"))
    received = request.headers.get("x-trace-id")
    log = logger.bind(event="upstream_request", service="fake-llm", model=model, stream=stream,
                      received_trace_id=received, trace_id=received,
                      traceparent=request.headers.get("traceparent"))

    spec = MODELS.get(model, DEFAULT_MODEL)
    roll = random.random()
    if _in_outage(spec):
        log.warning("fake LLM: outage, answering 503")
        return _error(503, "overloaded", "the service is temporarily overloaded")
    if _over_quota(model, spec):
        log.warning("fake LLM: over quota, answering 429")
        return _error(429, "rate_limit_exceeded", "too many requests per second")
    if roll < ERROR_RATE:
        status = random.choice((500, 429))
        log.warning("fake LLM: failing with {status}", status=status)
        if status == 429:
            return _error(429, "rate_limit_exceeded", "rate limit reached, retry later")
        return _error(500, "server_error", "the model had a problem")
    if roll < ERROR_RATE + TIMEOUT_RATE:
        log.warning("fake LLM: hanging past the client's timeout")
        return await _hang(request)
    log.info("fake LLM received a request with trace {trace}", trace=received)

    tokens = _answer(messages)
    usage = _usage(model, messages, len(tokens))
    if not stream:
        delay = random.uniform(*spec.first_token) + len(tokens) * random.uniform(*spec.per_token)
        await asyncio.sleep(delay)
        return JSONResponse({
            "id": f"chatcmpl-{random.getrandbits(48):x}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(tokens)}}],
            "usage": usage,
        })
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(_stream(model, spec, tokens, usage if include_usage else None),
                             media_type="text/event-stream")


async def _stream(model: str, spec: Model, tokens: list[str], usage: dict[str, Any] | None
                  ) -> AsyncIterator[str]:
    chunk_id = f"chatcmpl-{random.getrandbits(48):x}"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        data = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": choices, **extra}
        return f"data: {json.dumps(data)}\n\n"

    await asyncio.sleep(random.uniform(*spec.first_token))
    for i, token in enumerate(tokens):
        if i:
            await asyncio.sleep(random.uniform(*spec.per_token))
        delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
        yield chunk([{"index": 0, "delta": delta, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if usage is not None:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


app = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])
