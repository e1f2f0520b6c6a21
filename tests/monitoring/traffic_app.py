"""A real instrumented app and the traffic that drives it, for the end-to-end monitoring test.

Unlike :mod:`catalog_app`, nothing here writes a metric by hand: a FastAPI app
is instrumented with ``instrument_app`` and the decorators, served by uvicorn
on loopback, and every series comes from the toolkit handling real requests.

- ``POST /chat``: a ``track_cache`` lookup in a ``trace_span``, then a streamed
  ``track_provider`` call (OpenAI-style, Anthropic-style or an unpriced local
  model) whose final chunk carries the usage; provider failures answer 502.
- ``GET /search`` and ``GET /ticker``: ``track_sse`` generators served as
  ``text/event-stream``, with heartbeats (yielded ``HEARTBEAT`` on one, the
  wrapper's own ``heartbeat=`` on the other); ``/search`` also calls a
  flat-fee web-search API (``record_usage(api_cost_usd=...)``) and streams a
  provider's tokens as events.
- ``POST /ask``: a gateway on the real ``openai`` and ``anthropic`` SDKs, each client
  instrumented by ``instrument_openai``/``instrument_anthropic`` and pointed at the
  fake provider (:mod:`tests.fakes.llm_server`): plain or streamed, the SDKs' own
  retries of a 429 or 500 (``retry-after-ms: 1``, so they do not sleep), the
  rate-limit headers of every answer, and, when the first provider fails past its
  retries, the other one, with ``mark_fallback``.
- ``GET /upstream``: outbound calls through an httpx client wrapped by
  ``instrument_client``, to this app's own ``/items/{item_id}``.
- ``GET /items/{item_id}`` (200 or 404), ``GET /boom`` (an unhandled error, 500),
  and any unknown path (404).

The dashboard's "Toolkit health" panels stay empty in a healthy app, so two
real mistakes feed them: the cache's ``hit=`` predicate raises on a legacy
entry (``instrument_internal_errors_total``), and clients pick model names
past ``max_label_values`` (``instrument_label_overflow_total``).

:class:`Traffic` drives all of that from a background thread, over real
sockets, and remembers the ``X-Trace-ID`` of every response it got; it scripts the
fake provider's failures (``FakeLLM.fail_next``) before the ``/ask`` calls that meet
them.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anthropic
import httpx
import openai
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from instrument import (
    HEARTBEAT,
    mark_fallback,
    record_usage,
    trace_span,
    track_cache,
    track_provider,
    track_sse,
)
from instrument.adapters.anthropic import instrument_anthropic
from instrument.adapters.httpx import instrument_client
from instrument.adapters.openai import instrument_openai
from instrument.adapters.starlette import instrument_app
from tests.fakes.llm_server import FakeLLM

OPENAI_MODEL = "gpt-4o-mini"  # priced, reports cached prompt tokens
ANTHROPIC_MODEL = "claude-3-5-haiku"  # priced, Anthropic-style stream events
LOCAL_MODEL = "llama-3.1-8b-instruct"  # served by a "local" provider: no price
#: The model of every provider, as the test expects to find it in the model variable.
MODELS = {"openai": OPENAI_MODEL, "anthropic": ANTHROPIC_MODEL, "local": LOCAL_MODEL,
          "websearch": "search-api"}
CACHE = "answers"
SEARCH_FEE_USD = 0.004
W3C_TRACE_ID = re.compile(r"[0-9a-f]{32}")
#: The providers ``/ask`` reaches through their real SDKs, in the gateway's default order.
SDK_PROVIDERS = ("openai", "anthropic")
#: What makes the gateway try the other provider: an SDK error once its own retries are
#: spent (an error status, the network, a timeout).
SDK_ERRORS = (openai.APIError, anthropic.APIError)

# --------------------------------------------------------------------------- fake providers


class ProviderError(Exception):
    """A failed provider call: the ``error_type`` label is its ``error_type`` attribute, if
    any, else its class name."""


class RateLimited(ProviderError):
    error_type = "http_429"


class Overloaded(ProviderError):
    error_type = "overloaded"


class StreamTimeout(ProviderError):
    """Labelled by its class name: ``StreamTimeout``."""


def _words(prompt: str, n: int) -> list[str]:
    base = prompt.split() or ["ok"]
    return [base[i % len(base)] for i in range(n)]


def _prompt_tokens(prompt: str) -> int:
    return 40 + 3 * len(prompt.split())


@track_provider("openai")
async def openai_stream(prompt: str, *, model: str, tokens: int = 8,
                        fail: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """Chat-completions chunks; the last one carries usage with cached prompt tokens."""
    await asyncio.sleep(0.004)  # time to first token
    if fail == "rate_limit":
        raise RateLimited("429 Too Many Requests")
    for i, word in enumerate(_words(prompt, tokens)):
        yield {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
        if fail == "timeout" and i == 2:
            raise StreamTimeout("stream stalled")
        await asyncio.sleep(0.002)
    prompt_tokens = _prompt_tokens(prompt)
    yield {"choices": [], "usage": {
        "prompt_tokens": prompt_tokens, "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens,
        "prompt_tokens_details": {"cached_tokens": prompt_tokens // 2}}}


@track_provider("anthropic")
async def anthropic_stream(prompt: str, *, model: str, tokens: int = 8,
                           fail: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """Messages-API events: usage in ``message_start`` and the final ``message_delta``."""
    await asyncio.sleep(0.006)
    if fail == "overloaded":
        raise Overloaded("529 overloaded")
    yield {"type": "message_start", "message": {"model": model, "usage": {
        "input_tokens": _prompt_tokens(prompt) - 16, "cache_read_input_tokens": 16,
        "output_tokens": 1}}}
    for word in _words(prompt, tokens):
        yield {"type": "content_block_delta", "delta": {"type": "text_delta", "text": word + " "}}
        await asyncio.sleep(0.002)
    yield {"type": "message_delta", "usage": {"output_tokens": tokens}}
    yield {"type": "message_stop"}


@track_provider("local")
async def local_stream(prompt: str, *, model: str, tokens: int = 6,
                       fail: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """A self-hosted OpenAI-compatible server: usage, but no price for its model."""
    await asyncio.sleep(0.003)
    for word in _words(prompt, tokens):
        yield {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
        await asyncio.sleep(0.001)
    yield {"choices": [], "usage": {"prompt_tokens": _prompt_tokens(prompt),
                                    "completion_tokens": tokens}}


STREAMS = {"openai": openai_stream, "anthropic": anthropic_stream, "local": local_stream}


@track_provider("websearch", MODELS["websearch"], operation="search")
async def web_search(query: str) -> list[str]:
    """A search API billed per request, not per token."""
    await asyncio.sleep(0.003)
    # cost_usd=0.0 says "no token cost": with api_cost_usd alone, a call without token
    # usage is also counted in provider_unpriced_requests_total (and fires UnpricedModelSeen).
    record_usage(cost_usd=0.0, api_cost_usd=SEARCH_FEE_USD)
    return [f"https://example.org/{word}" for word in query.split()[:3]]


def _text(chunk: dict[str, Any]) -> str:
    if chunk.get("choices"):
        return str(chunk["choices"][0]["delta"].get("content", ""))
    if chunk.get("type") == "content_block_delta":
        return str(chunk["delta"]["text"])
    return ""


# --------------------------------------------------------------------------- real SDKs


class SDKs:
    """The real ``openai`` and ``anthropic`` async clients, instrumented, on the fake
    provider at ``llm_url``. One SDK retry each (``max_retries=1``): a single 429 or 500
    is retried and answered, two in a row fail the call."""

    def __init__(self, llm_url: str) -> None:
        self.openai = instrument_openai(openai.AsyncOpenAI(
            base_url=llm_url + "/v1", api_key="sk-fake", max_retries=1, timeout=10))
        self.anthropic = instrument_anthropic(anthropic.AsyncAnthropic(
            base_url=llm_url, api_key="sk-ant-fake", max_retries=1, timeout=10))

    async def ask(self, provider: str, prompt: str, stream: bool) -> str:
        if provider == "openai":
            return await self._openai(prompt, stream)
        return await self._anthropic(prompt, stream)

    async def _openai(self, prompt: str, stream: bool) -> str:
        if not stream:
            reply = await self.openai.chat.completions.create(
                model=OPENAI_MODEL, messages=[{"role": "user", "content": prompt}])
            return reply.choices[0].message.content or ""
        chunks = await self.openai.chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True})
        async with chunks:
            return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks
                            if chunk.choices])

    async def _anthropic(self, prompt: str, stream: bool) -> str:
        if not stream:
            reply = await self.anthropic.messages.create(
                model=ANTHROPIC_MODEL, max_tokens=64,
                messages=[{"role": "user", "content": prompt}])
            return "".join(block.text for block in reply.content if block.type == "text")
        async with self.anthropic.messages.stream(
                model=ANTHROPIC_MODEL, max_tokens=64,
                messages=[{"role": "user", "content": prompt}]) as events:
            return "".join([text async for text in events.text_stream])

    async def aclose(self) -> None:
        await self.openai.close()
        await self.anthropic.close()


# --------------------------------------------------------------------------- cache


def _fresh(entry: Any) -> bool:
    """A hit is a fresh entry. A legacy entry (a bare string) makes this predicate raise:
    the toolkit swallows that and counts it as an internal error (the dashboard's
    "Toolkit internal errors" panel), while the app itself treats the entry as a miss."""
    return entry is not None and bool(entry["fresh"])


class AnswerCache:
    def __init__(self) -> None:
        self.entries: dict[str, Any] = {"legacy": "an entry written by an older release"}

    @track_cache(CACHE, hit=_fresh)
    async def get(self, key: str) -> Any:
        await asyncio.sleep(0.0005)
        return self.entries.get(key)

    def put(self, key: str, answer: str) -> None:
        if key != "legacy":  # the old entry stays, so every round exercises it again
            self.entries[key] = {"answer": answer, "fresh": True}


# --------------------------------------------------------------------------- app


class ChatRequest(BaseModel):
    prompt: str
    provider: str = "openai"
    model: str | None = None
    fail: str | None = None
    tokens: int = 8


class AskRequest(BaseModel):
    prompt: str
    provider: str = "openai"  # tried first; the other one of SDK_PROVIDERS is the fallback
    stream: bool = False


@track_sse("/search")
async def search_events(query: str, tokens: int) -> AsyncIterator[Any]:
    """Heartbeat while searching, the sources, then the answer's tokens, then [DONE]."""
    yield HEARTBEAT
    sources = await web_search(query)
    yield ": still thinking\n\n"  # an SSE comment also counts as a heartbeat
    yield f"event: sources\ndata: {' '.join(sources)}\n\n"
    async for chunk in openai_stream(query, model=OPENAI_MODEL, tokens=tokens):
        text = _text(chunk)
        if text:
            yield f"data: {text.strip()}\n\n"
    yield "data: [DONE]\n\n"


@track_sse("/ticker", heartbeat=0.015)
async def ticker_events(count: int) -> AsyncIterator[str]:
    """A slow source: the wrapper sends heartbeats while it is silent."""
    for i in range(count):
        await asyncio.sleep(0.04)
        yield f"event: tick\ndata: {i}\n\n"


def create_app(llm_url: str) -> FastAPI:
    """The FastAPI app, instrumented (its ``/metrics`` serves the configured registry);
    ``/ask`` reaches the fake provider at ``llm_url`` through the real SDKs."""
    cache = AnswerCache()
    items = {"1": {"id": "1", "name": "widget"}, "2": {"id": "2", "name": "gadget"}}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = instrument_client(httpx.AsyncClient(timeout=10))
        app.state.http = client
        app.state.sdks = sdks = SDKs(llm_url)
        try:
            yield
        finally:
            await sdks.aclose()
            await client.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.base_url = ""  # set by serve() once the port is known

    @app.post("/chat")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        key = f"{body.provider}:{body.model}:{body.prompt}"
        with trace_span("retrieve", cache=CACHE):
            entry = await cache.get("legacy" if body.prompt == "legacy" else key)
        if isinstance(entry, dict) and entry["fresh"]:
            return {"answer": entry["answer"], "cached": True}
        stream = STREAMS.get(body.provider)
        if stream is None:
            raise HTTPException(400, f"unknown provider {body.provider!r}")
        model = body.model or MODELS[body.provider]
        try:
            with trace_span("generate", provider=body.provider):
                parts = [_text(c) async for c in stream(body.prompt, model=model,
                                                         tokens=body.tokens, fail=body.fail)]
        except ProviderError as exc:
            raise HTTPException(502, f"provider failed: {type(exc).__name__}") from exc
        answer = "".join(parts).strip()
        cache.put(key, answer)
        return {"answer": answer, "cached": False}

    @app.post("/ask")
    async def ask(body: AskRequest) -> dict[str, Any]:
        """Gateway-style: the first provider, then, if it fails past its SDK's retries,
        the other one (``mark_fallback``). Answers which one answered."""
        if body.provider not in SDK_PROVIDERS:
            raise HTTPException(400, f"unknown provider {body.provider!r}")
        sdks: SDKs = app.state.sdks
        order = [body.provider] + [p for p in SDK_PROVIDERS if p != body.provider]
        for provider, after in zip(order, [*order[1:], None], strict=True):
            try:
                answer = await sdks.ask(provider, body.prompt, body.stream)
            except SDK_ERRORS as exc:
                if after is None:
                    raise HTTPException(502, f"providers failed: {type(exc).__name__}") from exc
                mark_fallback(provider, after)
                continue
            return {"answer": answer, "provider": provider}
        raise AssertionError("unreachable")  # pragma: no cover

    @app.get("/search")
    async def search(q: str, tokens: int = 10) -> StreamingResponse:
        return StreamingResponse(search_events(q, tokens), media_type="text/event-stream")

    @app.get("/ticker")
    async def ticker(count: int = 4) -> StreamingResponse:
        return StreamingResponse(ticker_events(count), media_type="text/event-stream")

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        if item_id not in items:
            raise HTTPException(404, "no such item")
        return items[item_id]

    @app.get("/upstream")
    async def upstream() -> dict[str, int]:
        client: httpx.AsyncClient = app.state.http
        found = await client.get(f"{app.state.base_url}/items/1")
        missing = await client.get(f"{app.state.base_url}/items/missing")
        return {"found": found.status_code, "missing": missing.status_code}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom: an unhandled error in a handler")

    return instrument_app(app)


@contextmanager
def serve(app: FastAPI, port: int) -> Iterator[str]:
    """``app`` on uvicorn at 127.0.0.1:``port`` in a background thread; always stopped."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                            loop="asyncio", http="h11", ws="none",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    base_url = f"http://127.0.0.1:{port}"
    app.state.base_url = base_url
    thread = threading.Thread(target=server.run, name="e2e-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"uvicorn did not start on {base_url}")
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():  # pragma: no cover - a hung stream despite the graceful timeout
            server.force_exit = True
            thread.join(timeout=5)


# --------------------------------------------------------------------------- traffic


class Traffic:
    """Rounds of real requests from a background thread until stopped.

    Every round covers each kind of traffic once; problems (an unexpected
    status, a bad trace header, a transport error) are collected in
    ``errors`` rather than raised in the thread.
    """

    def __init__(self, base_url: str, overflow_models: int, fake: FakeLLM) -> None:
        self.base_url = base_url
        self.overflow_models = overflow_models
        self.fake = fake  # the provider behind /ask: its failures are scripted per call
        self.trace_ids: set[str] = set()
        self.errors: list[str] = []
        self.rounds = 0
        self.disconnects = 0
        self.streams_completed = 0
        self.fallbacks = 0  # /ask calls answered by the other provider
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-traffic", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Finish the round in progress and stop (idempotent)."""
        self._stop.set()
        self._thread.join(timeout=20)

    def wait_rounds(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.rounds < n and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        if self.rounds < n:
            raise AssertionError(f"only {self.rounds} traffic rounds in {timeout}s: {self.errors}")

    # -- one round -------------------------------------------------------------------
    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    self.round(client, self.rounds)
                except Exception as exc:  # reported by the test, not lost in the thread
                    self.errors.append(f"round {self.rounds}: {type(exc).__name__}: {exc}")
                    time.sleep(0.1)
                self.rounds += 1

    def _seen(self, response: httpx.Response, what: str, status: int) -> None:
        if response.status_code != status:
            self.errors.append(f"{what}: HTTP {response.status_code}, expected {status}")
        trace_id = response.headers.get("x-trace-id", "")
        if not W3C_TRACE_ID.fullmatch(trace_id):
            self.errors.append(f"{what}: X-Trace-ID {trace_id!r} is not 32 hex digits")
        with self._lock:
            self.trace_ids.add(trace_id)

    def _chat(self, client: httpx.Client, status: int = 200, **body: Any) -> None:
        response = client.post("/chat", json=body)
        self._seen(response, f"POST /chat {body}", status)

    def _ask(self, client: httpx.Client, fail: list[int], answered_by: str | None = None,
             **body: Any) -> None:
        """POST /ask, the fake provider answering its next requests with ``fail`` first
        (the SDKs retry once; a second failure in a row makes the gateway fall back)."""
        self.fake.fail_next[:] = fail
        response = client.post("/ask", json=body)
        what = f"POST /ask {body} (provider answering {fail} first)"
        self._seen(response, what, 200)
        expected = answered_by or body["provider"]
        if response.status_code == 200 and response.json()["provider"] != expected:
            self.errors.append(f"{what}: answered by {response.json()}, expected {expected}")
        elif response.status_code == 200 and expected != body["provider"]:
            self.fallbacks += 1
        if self.fake.fail_next:
            self.errors.append(f"{what}: failures left unanswered: {self.fake.fail_next}")
            self.fake.fail_next.clear()

    def round(self, client: httpx.Client, n: int) -> None:
        # Provider calls: repeated prompts hit the cache from the second round on.
        self._chat(client, prompt="what is observability", provider="openai")
        self._chat(client, prompt=f"fresh question number {n}", provider="openai")
        self._chat(client, prompt="summarise the incident report", provider="anthropic")
        self._chat(client, prompt=f"translate sentence {n}", provider="local")
        self._chat(client, prompt="legacy", provider="openai")  # the cache predicate raises
        # Failures by error type: before the first token and mid-stream.
        self._chat(client, 502, prompt=f"busy {n}", provider="openai", fail="rate_limit")
        self._chat(client, 502, prompt=f"slow {n}", provider="openai", fail="timeout")
        self._chat(client, 502, prompt=f"heavy {n}", provider="anthropic", fail="overloaded")
        # The real SDKs on the fake provider: every answer carries rate-limit headers; a
        # 429 or 500 is retried by the SDK (retries_total); two 500s in a row exhaust the
        # openai client's one retry and the gateway falls back to anthropic (fallbacks_total).
        self._ask(client, [], prompt=f"sdk question {n}", provider="openai")
        self._ask(client, [429], prompt=f"sdk busy {n}", provider="openai", stream=True)
        self._ask(client, [500], prompt=f"sdk hiccup {n}", provider="anthropic")
        self._ask(client, [], prompt=f"sdk stream {n}", provider="anthropic", stream=True)
        self._ask(client, [500, 500], "anthropic", prompt=f"sdk down {n}", provider="openai",
                  stream=True)
        # Plain HTTP: success, 404s (a known route and an unmatched path), a 500.
        self._seen(client.get("/items/2"), "GET /items/2", 200)
        self._seen(client.get("/items/404"), "GET /items/404", 404)
        self._seen(client.get(f"/no/such/path/{n}"), "GET /no/such/path", 404)
        # uvicorn closes the connection when the app raises after its response (Starlette's
        # ServerErrorMiddleware re-raises after sending the 500): don't reuse it.
        self._seen(client.get("/boom", headers={"Connection": "close"}), "GET /boom", 500)
        # Outbound HTTP through the instrumented httpx client.
        response = client.get("/upstream")
        self._seen(response, "GET /upstream", 200)
        if response.status_code == 200 and response.json() != {"found": 200, "missing": 404}:
            self.errors.append(f"GET /upstream: {response.json()}")
        # SSE read to the end, and one left by its client half-way.
        self._stream(client, f"/search?q=metrics+for+llm+apps+{n}&tokens=6", leave_after=None)
        self._stream(client, "/ticker?count=4", leave_after=None)
        self._stream(client, "/search?q=a+long+answer&tokens=400", leave_after=3)
        # Client-chosen model names (a gateway), last so that the app's own models hold
        # their label values: past max_label_values, new names are recorded as "other".
        first = 0 if n == 0 else self.overflow_models + 2 * (n - 1)
        count = self.overflow_models if n == 0 else 2
        for i in range(first, first + count):
            self._chat(client, prompt="hi", provider="local", model=f"ft:custom-{i}", tokens=2)

    def _stream(self, client: httpx.Client, url: str, leave_after: int | None) -> None:
        events = 0
        with client.stream("GET", url) as response:
            self._seen(response, f"GET {url}", 200)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                self.errors.append(f"GET {url}: content-type {response.headers!r}")
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events += 1
                    if leave_after is not None and events >= leave_after:
                        break  # closing the response drops the connection mid-stream
                    if line == "data: [DONE]":
                        break
        if leave_after is not None:
            self.disconnects += 1
        elif events:
            self.streams_completed += 1
        else:
            self.errors.append(f"GET {url}: no events")
