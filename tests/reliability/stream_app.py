"""The streams of the exit-path tests: a ``@track_sse`` generator relaying a ``@track_provider``
streaming call, served by FastAPI (uvicorn) and by aiohttp. Each request names its plan: how
its upstream behaves (holds before a token, trickles, breaks) and whether the handler puts a
deadline on it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web
from fastapi import FastAPI
from starlette.responses import StreamingResponse

from instrument import get_trace_id, track_provider, track_sse
from instrument.adapters.aiohttp import instrument_app as instrument_aiohttp
from instrument.adapters.fastapi import instrument_app as instrument_fastapi

MODEL = "stream-model"
#: nothing in these streams waits longer than this: a server always stops
BOUND = 30.0


class UpstreamBroke(Exception):
    """The fake upstream failing mid-stream: it must come out of both decorators unchanged."""


@dataclass
class Plan:
    """How one scenario's upstream behaves."""

    tokens: int = 5
    #: before this token, wait until ``release`` is set (bounded)
    hold_at: int | None = None
    #: from this token on, one token every 10 ms (a stream that outlives its client)
    trickle_from: int | None = None
    #: raise ``UpstreamBroke`` instead of this token
    fail_at: int | None = None
    #: the handler's own deadline on the upstream call (seconds)
    deadline: float | None = None
    #: each token padded to this many characters (a client that stops reading is soon
    #: behind by more than every buffer on the way holds)
    pad: int = 0
    release: threading.Event = field(default_factory=threading.Event)


async def _hold(release: threading.Event) -> None:
    end = time.monotonic() + BOUND
    while not release.is_set() and time.monotonic() < end:
        await anyio.sleep(0.01)


@track_provider("fake-llm", model=MODEL)
async def upstream(plan: Plan) -> AsyncIterator[dict[str, Any]]:
    for k in range(plan.tokens):
        if k == plan.hold_at:
            await _hold(plan.release)
        if k == plan.fail_at:
            raise UpstreamBroke(f"the upstream broke at token {k}")
        if plan.trickle_from is not None and k >= plan.trickle_from:
            await anyio.sleep(0.01)
        yield {"choices": [{"delta": {"content": f"t{k}".ljust(plan.pad, ".")}}]}
    yield {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": plan.tokens}}


Deadline = Callable[[float], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def fail_after(seconds: float) -> AsyncIterator[None]:
    """anyio's deadline (``asyncio.timeout`` is already an async context manager)."""
    with anyio.fail_after(seconds):
        yield


@track_sse("/chat")
async def chat(plan: Plan, deadline: Deadline) -> AsyncIterator[str]:
    """Relays the upstream's tokens, each event carrying the trace ID the generator sees."""
    # the deadline fires before the first event (the upstream holds): no scope spans a yield
    async with deadline(plan.deadline) if plan.deadline is not None else nullcontext():
        async for chunk in upstream(plan):
            if chunk["choices"]:
                yield f"data: {get_trace_id()} {chunk['choices'][0]['delta']['content']}\n\n"
    yield f"data: {get_trace_id()} [DONE]\n\n"


def fastapi_app(plans: dict[str, Plan]) -> FastAPI:
    app = FastAPI()

    @app.get("/chat/{plan}")
    async def stream(plan: str) -> StreamingResponse:
        return StreamingResponse(chat(plans[plan], fail_after),
                                 media_type="text/event-stream")

    return instrument_fastapi(app)


def aiohttp_app(plans: dict[str, Plan]) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for event in chat(plans[request.match_info["plan"]], asyncio.timeout):
            await response.write(event.encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/chat/{plan}", stream)
    return instrument_aiohttp(app)
