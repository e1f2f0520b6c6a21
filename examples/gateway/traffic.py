"""A traffic generator for the gateway: concurrent searches, repeated questions, impatient users.

Half the questions come from a short list of popular ones, so the cache starts
hitting within seconds; a quarter of the searchers give up half-way through a
stream (or while the model is still thinking); a couple of clients post to
/chat. Provider errors come from the fake LLM's own failure rate.
"""

from __future__ import annotations

import asyncio
import random

import httpx

POPULAR = [
    "What is time to first token?",
    "How do I read a p95 latency?",
    "Why send SSE heartbeats?",
    "How does prompt caching lower cost?",
    "When should a gateway fall back to another provider?",
    "How do I follow one request across services?",
]
TOPICS = ["histograms", "streaming", "prompt caching", "fallbacks", "trace IDs", "heartbeats",
          "rate limits", "token costs"]
ASPECTS = ["latency", "cost", "reliability", "debugging", "proxies", "user experience",
           "alerting", "capacity planning"]


def question(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(POPULAR)
    return f"How do {rng.choice(TOPICS)} affect {rng.choice(ASPECTS)}?"


async def searcher(client: httpx.AsyncClient, rng: random.Random) -> None:
    """Search forever; one search in four is abandoned early."""
    while True:
        impatient = rng.random() < 0.25
        tokens = heartbeats = 0
        try:
            async with client.stream("GET", "/search", params={"q": question(rng)}) as response:
                async for line in response.aiter_lines():
                    if line == "event: token":
                        tokens += 1
                    elif line.startswith(":"):
                        heartbeats += 1
                    if impatient and (tokens >= 3 or heartbeats >= 3):
                        break  # leaving closes the connection: a client_disconnect
        except httpx.HTTPError:
            pass  # the gateway is shutting down, or busy: try again
        await asyncio.sleep(rng.uniform(0.05, 0.3))


async def chatter(client: httpx.AsyncClient, rng: random.Random) -> None:
    """Ask whole questions over POST /chat forever."""
    while True:
        try:
            await client.post("/chat", json={"question": question(rng)})
        except httpx.HTTPError:
            pass
        await asyncio.sleep(rng.uniform(0.1, 0.4))


async def run_traffic(base_url: str, *, searchers: int = 6, chatters: int = 2,
                      seed: int | None = None) -> None:
    """Drive the gateway at ``base_url`` until cancelled."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        workers = [searcher(client, random.Random(rng.random())) for _ in range(searchers)]
        workers += [chatter(client, random.Random(rng.random())) for _ in range(chatters)]
        await asyncio.gather(*workers)


if __name__ == "__main__":  # against a gateway that is already running
    import sys

    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    try:
        asyncio.run(run_traffic(url))
    except KeyboardInterrupt:
        pass
