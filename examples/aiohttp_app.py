"""aiohttp with the aiohttp adapter, calling an upstream through an instrumented ClientSession.

    python examples/aiohttp_app.py      # then, in another shell:
    curl -H 'X-Trace-ID: 4bf92f3577b34da6a3ce929d0e0e4736' 'localhost:8080/answer?q=hello'
    curl localhost:8080/metrics/summary

The "upstream LLM" is a route of this same app, called over HTTP, so the
answer shows the trace ID the upstream received: the one of the request that
called it. PORT overrides the port.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from instrument import configure_logging, get_trace_id, load_prices, track_provider
from instrument.adapters.aiohttp import client_trace_config, instrument_app

SESSION = web.AppKey("session", aiohttp.ClientSession)

load_prices({"local/tiny-1": {"input": 0.20, "cached_input": 0.05, "output": 0.80}})


async def upstream_complete(request: web.Request) -> web.Response:
    """The stand-in for an LLM API: answers, and says which trace ID reached it."""
    body = await request.json()
    await asyncio.sleep(random.uniform(0.01, 0.05))
    return web.json_response({
        "text": f"You asked about {body['prompt']}.",
        "received_trace_id": request.headers.get("X-Trace-ID"),
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
    })


@track_provider("local", "tiny-1")
async def complete(session: aiohttp.ClientSession, base_url: str, prompt: str) -> dict[str, Any]:
    """One provider call over HTTP; the decorator reads ``usage`` from the result."""
    async with session.post(f"{base_url}/upstream/complete", json={"prompt": prompt}) as resp:
        resp.raise_for_status()
        result: dict[str, Any] = await resp.json()
        return result


async def answer(request: web.Request) -> web.Response:
    base_url = str(request.url.origin())  # ourselves: see the module docstring
    reply = await complete(request.app[SESSION], base_url, request.query.get("q", "nothing"))
    return web.json_response({"answer": reply["text"], "trace_id": get_trace_id(),
                              "upstream_received_trace_id": reply["received_trace_id"]})


async def client_session(app: web.Application) -> AsyncIterator[None]:
    # trace_configs: X-Trace-ID/traceparent on every request, http_client_* metrics
    async with aiohttp.ClientSession(trace_configs=[client_trace_config()]) as session:
        app[SESSION] = session
        yield


def make_app() -> web.Application:
    app = web.Application()
    instrument_app(app)  # before adding routes or starting: its middleware goes first
    app.router.add_get("/answer", answer)
    app.router.add_post("/upstream/complete", upstream_complete)
    app.cleanup_ctx.append(client_session)
    return app


if __name__ == "__main__":
    configure_logging("INFO")
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8080")),
                access_log=None,  # the adapter writes the access log, with trace IDs
                print=lambda message: print(message, flush=True))
