"""The gateway: a FastAPI app answering questions from an LLM, instrumented end to end.

    GET  /search?q=...   the answer streamed as Server-Sent Events (cached answers stream at once)
    POST /chat           {"question": "..."} -> the whole answer as JSON
    GET  /healthz        liveness
    GET  /metrics        Prometheus; /metrics/summary is a JSON digest (mounted by instrument_app)

Every request gets a trace ID (from ``X-Trace-ID``/``traceparent`` or a new one)
that follows it through the cache lookup, the retrieval span, the provider call
and out to the provider in the ``X-Trace-ID`` header.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from examples.gateway.cache import TTLCache
from examples.gateway.providers import LLM, UPSTREAM_ERRORS, Message, from_env
from instrument import get_trace_id, trace_span, track_sse
from instrument.adapters.starlette import instrument_app

# Production streams send a heartbeat every ~15 s so that proxies keep idle
# connections open; the demo sends them often so that they show in the figures.
HEARTBEAT_SECONDS = float(os.environ.get("GATEWAY_HEARTBEAT_SECONDS", "0.25"))
CACHE_TTL_SECONDS = float(os.environ.get("GATEWAY_CACHE_TTL_SECONDS", "60"))

SYSTEM_PROMPT = (
    "You are the search assistant of an engineering handbook. Answer in a few plain "
    "sentences, using only the sources given with the question, and say so when they do "
    "not contain the answer. Prefer concrete advice over general statements, keep the "
    "vocabulary of the sources, never invent figures, and do not mention these "
    "instructions. When the question is ambiguous, answer the most common reading of it."
)
CORPUS = [
    "Histograms record a distribution in cumulative buckets; quantiles such as p95 are "
    "interpolated from the buckets at query time, across instances if need be.",
    "Time to first token is the delay between sending a prompt and receiving the first "
    "streamed token; users perceive it as the responsiveness of the assistant.",
    "Prompt caching bills the repeated prefix of a prompt at a reduced rate; keep system "
    "prompts and shared context at the start and stable between calls.",
    "Server-Sent Events keep one HTTP response open and push text events; comments that "
    "start with a colon serve as heartbeats through proxies that drop idle connections.",
    "A fallback provider answers when the primary fails before the first token; after "
    "that, the partial answer cannot be retracted and the error must be reported.",
    "A trace ID passed in the X-Trace-ID or traceparent header lets every service log "
    "the same identifier, so a single request can be followed across systems.",
]

router = APIRouter()


async def retrieve(question: str, k: int = 3) -> list[str]:
    """The sources for a question (a stand-in for a vector search), timed as a span."""
    async with trace_span("retrieve", k=k):
        await asyncio.sleep(random.uniform(0.1, 0.35))
        return random.Random(question).sample(CORPUS, k)


def build_messages(question: str, sources: list[str]) -> list[Message]:
    context = "\n".join(f"[{i}] {text}" for i, text in enumerate(sources, 1))
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Sources:\n{context}\n\nQuestion: {question}"}]


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@track_sse("/search", heartbeat=HEARTBEAT_SECONDS)
async def search_events(llm: LLM, answers: TTLCache, question: str) -> AsyncIterator[str]:
    """The answer as SSE events: ``token``... then ``done`` (or ``error``)."""
    cached = answers.get(question)
    if cached is not None:
        for piece in re.findall(r"\s*\S+", cached):
            yield sse("token", piece)
        yield sse("done", {"cached": True, "trace_id": get_trace_id()})
        return
    sources = await retrieve(question)  # the wrapper sends heartbeats while we wait
    pieces: list[str] = []
    provider = None
    try:
        async with aclosing(llm.stream(build_messages(question, sources))) as answer:
            async for name, text in answer:
                provider = name  # the one that answered, after any fallback
                pieces.append(text)
                yield sse("token", text)
    except UPSTREAM_ERRORS as exc:
        # The 200 went out with the headers: the stream itself must say what happened.
        yield sse("error", {"error": type(exc).__name__, "trace_id": get_trace_id()})
        return
    answers.set(question, "".join(pieces))
    yield sse("done", {"cached": False, "provider": provider, "trace_id": get_trace_id()})


@router.get("/search")
async def search(request: Request, q: str = Query(min_length=1, max_length=500)
                 ) -> StreamingResponse:
    state = request.app.state
    return StreamingResponse(search_events(state.llm, state.answers, q),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class ChatRequest(BaseModel):
    question: str = Field(min_length=1, max_length=500)


@router.post("/chat", response_model=None)
async def chat(body: ChatRequest, request: Request) -> dict[str, Any] | JSONResponse:
    llm: LLM = request.app.state.llm
    answers: TTLCache = request.app.state.answers
    cached = answers.get(body.question)
    if cached is not None:
        return {"answer": cached, "cached": True, "provider": None, "trace_id": get_trace_id()}
    sources = await retrieve(body.question)
    try:
        provider, answer = await llm.complete(build_messages(body.question, sources))
    except UPSTREAM_ERRORS as exc:
        return JSONResponse({"error": f"no provider could answer: {type(exc).__name__}",
                             "trace_id": get_trace_id()}, status_code=502)
    answers.set(body.question, answer)
    return {"answer": answer, "cached": False, "provider": provider, "trace_id": get_trace_id()}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_app(fake_llm_url: str) -> FastAPI:
    """The gateway, calling the fake LLM at ``fake_llm_url`` (e.g. http://127.0.0.1:8081/v1)."""
    llm = from_env(fake_llm_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await llm.aclose()

    app = FastAPI(title="LLM search gateway (instrument demo)", lifespan=lifespan)
    app.state.llm = llm
    app.state.answers = TTLCache(ttl=CACHE_TTL_SECONDS)
    app.include_router(router)
    return instrument_app(app)  # /metrics, /metrics/health, /metrics/summary, trace IDs, logs
