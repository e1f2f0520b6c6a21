"""Tests for ``@track_provider`` and ``record_usage``: every callable kind, every exit path.

Each test reads the metrics back from the test's own registry and parses every
log line as JSON; the cost figures are worked out by hand from
``instrument/data/prices.json`` (USD per million tokens) in the comments.
"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from instrument import (
    _provider,
    get_span_id,
    get_trace_id,
    record_usage,
    trace_span,
    track_provider,
    use_trace_id,
)
from instrument._pricing import reset_prices
from tests.conftest import LogCapture
from tests.helpers import Boom, dropped_async_generator, value

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")
KINDS = ["function", "coroutine", "generator", "asyncgen"]
STREAMS = ["generator", "asyncgen"]

pytestmark = pytest.mark.no_internal_errors


@pytest.fixture(autouse=True)
def _fresh_provider_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # "warn once per model" is process-wide: give every test its own memory of it
    monkeypatch.setattr(_provider, "_warned_unpriced", set())
    yield
    reset_prices()


class Body:
    """The four kinds of a provider call with one behaviour: ok, error or block.

    ``error`` raises after the first item of a stream; ``block`` waits forever
    (after the first item of a stream) so the caller can cancel it.
    """

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.error = Boom("upstream 503")
        self.started = anyio.Event() if behaviour == "block" else None

    async def _pause(self) -> None:
        if self.behaviour == "block":
            assert self.started is not None
            self.started.set()
            await anyio.sleep_forever()

    def function(self, prompt: str = "hi", **kwargs: Any) -> str:
        if self.behaviour == "error":
            raise self.error
        return "answer"

    async def coroutine(self, prompt: str = "hi", **kwargs: Any) -> str:
        await anyio.sleep(0)
        if self.behaviour == "error":
            raise self.error
        await self._pause()
        return "answer"

    def generator(self, prompt: str = "hi", **kwargs: Any) -> Iterator[str]:
        yield "a"
        if self.behaviour == "error":
            raise self.error
        yield "b"

    async def asyncgen(self, prompt: str = "hi", **kwargs: Any) -> AsyncIterator[str]:
        await anyio.sleep(0)
        yield "a"
        if self.behaviour == "error":
            raise self.error
        await self._pause()
        yield "b"


def tracked(kind: str, behaviour: str = "ok", model: str | None = "gpt-4o",
            **options: Any) -> tuple[Any, Body]:
    body = Body(behaviour)
    return track_provider("openai", model, **options)(getattr(body, kind)), body


async def consume(fn: Callable[..., Any], kind: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` and drive it to its end, whatever its kind."""
    if kind == "function":
        return fn(*args, **kwargs)
    if kind == "coroutine":
        return await fn(*args, **kwargs)
    if kind == "generator":
        return list(fn(*args, **kwargs))
    return [item async for item in fn(*args, **kwargs)]


def requests(registry: CollectorRegistry, status: str, model: str = "gpt-4o") -> float:
    return value(registry, "provider_requests_total", provider="openai", model=model,
                 status=status)


def assert_one_call(registry: CollectorRegistry, status: str, *, first_item: bool,
                    model: str = "gpt-4o") -> None:
    """Exactly one call, ended with ``status``; nothing left in flight; TTFT only if streamed."""
    for other in ("ok", "error", "cancelled"):
        assert requests(registry, other, model) == (1 if other == status else 0), other
    assert value(registry, "provider_inflight_requests", provider="openai") == 0
    labels = {"provider": "openai", "model": model}
    assert value(registry, "provider_request_duration_seconds_count", **labels) == 1
    assert value(registry, "provider_time_to_first_token_seconds_count", **labels) == (
        1 if first_item else 0)


def only_call(logs: LogCapture) -> dict[str, Any]:
    events = logs.events("provider_call")
    assert len(events) == 1, events
    return events[0]


# --- completed ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_completed_call_of_every_kind(kind: str, registry: CollectorRegistry,
                                            logs: LogCapture) -> None:
    fn, _ = tracked(kind)
    result = await consume(fn, kind)
    assert result == ("answer" if kind in ("function", "coroutine") else ["a", "b"])
    streamed = kind in STREAMS
    assert_one_call(registry, "ok", first_item=streamed)
    event = only_call(logs)
    assert event["level"] == "INFO"
    assert (event["provider"], event["model"], event["status"]) == ("openai", "gpt-4o", "ok")
    assert event["operation"] == "chat"
    assert isinstance(event["latency_ms"], float) and event["latency_ms"] >= 0
    if streamed:
        assert isinstance(event["ttft_ms"], float)
        assert 0 <= event["ttft_ms"] <= event["latency_ms"]
    else:
        assert event["ttft_ms"] is None  # time to first token is for streams only
    assert HEX32.fullmatch(event["trace_id"])
    assert HEX16.fullmatch(event["span_id"])
    assert "error_type" not in event
    assert "request" not in event and "response" not in event


# --- error ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", KINDS)
async def test_error_of_every_kind_reraises_the_same_exception(
        kind: str, registry: CollectorRegistry, logs: LogCapture) -> None:
    fn, body = tracked(kind, "error")
    with pytest.raises(Boom) as info:
        await consume(fn, kind)
    assert info.value is body.error
    raised_in = []
    tb = info.value.__traceback__
    while tb is not None:
        raised_in.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert raised_in[-1] == kind  # the traceback still ends where the user's code raised
    assert_one_call(registry, "error", first_item=kind in STREAMS)
    assert value(registry, "provider_errors_total", provider="openai", model="gpt-4o",
                 error_type="Boom") == 1
    event = only_call(logs)
    assert (event["status"], event["error_type"], event["level"]) == ("error", "Boom",
                                                                      "WARNING")


def test_error_type_label_is_bounded(registry: CollectorRegistry) -> None:
    from instrument import configure

    configure(registry=registry, max_label_values=2)
    classes = [type(f"Error{i}", (Exception,), {}) for i in range(4)]

    @track_provider("openai", "gpt-4o")
    def call(exc_type: type[Exception]) -> None:
        raise exc_type()

    for exc_type in classes:
        with pytest.raises(exc_type):
            call(exc_type)
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_errors_total", error_type="Error0", **labels) == 1
    assert value(registry, "provider_errors_total", error_type="Error1", **labels) == 1
    assert value(registry, "provider_errors_total", error_type="other", **labels) == 2


# --- the consumer stops early --------------------------------------------------------


def test_sync_stream_early_break_is_cancelled(registry: CollectorRegistry,
                                              logs: LogCapture) -> None:
    fn, _ = tracked("generator")
    for item in fn():
        assert item == "a"
        break
    gc.collect()
    assert_one_call(registry, "cancelled", first_item=True)
    assert only_call(logs)["status"] == "cancelled"
    assert value(registry, "provider_errors_total", provider="openai", model="gpt-4o",
                 error_type="GeneratorExit") == 0


def test_sync_stream_close_is_cancelled(registry: CollectorRegistry, logs: LogCapture) -> None:
    fn, _ = tracked("generator")
    stream = fn()
    assert next(stream) == "a"
    stream.close()
    stream.close()
    assert_one_call(registry, "cancelled", first_item=True)
    assert only_call(logs)["status"] == "cancelled"


@pytest.mark.anyio
async def test_async_stream_early_break_then_aclose_is_cancelled(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    fn, _ = tracked("asyncgen")
    stream = fn()
    async for item in stream:
        assert item == "a"
        break
    await stream.aclose()
    await stream.aclose()
    assert_one_call(registry, "cancelled", first_item=True)
    assert only_call(logs)["status"] == "cancelled"


# --- task cancellation ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["coroutine", "asyncgen"])
async def test_cancelled_task_is_counted_cancelled_and_reraised(
        kind: str, registry: CollectorRegistry, logs: LogCapture) -> None:
    fn, body = tracked(kind, "block")
    assert body.started is not None
    reraised = []

    async def caller() -> None:
        try:
            await consume(fn, kind)
        except anyio.get_cancelled_exc_class():
            reraised.append(True)
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await body.started.wait()
        tg.cancel_scope.cancel()
    assert reraised == [True]
    assert_one_call(registry, "cancelled", first_item=kind == "asyncgen")
    event = only_call(logs)
    assert event["status"] == "cancelled"
    assert event["level"] == "INFO"
    assert value(registry, "provider_errors_total", provider="openai", model="gpt-4o",
                 error_type="CancelledError") == 0


@pytest.mark.parametrize("kind", ["coroutine", "asyncgen"])
def test_asyncio_task_cancel_is_cancelled_and_reraised(kind: str,
                                                       registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o")
    async def call() -> None:
        await asyncio.sleep(3600)

    @track_provider("openai", "gpt-4o")
    async def stream() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(3600)
        yield "b"

    async def main() -> None:
        task = asyncio.ensure_future(consume(call if kind == "coroutine" else stream, kind))
        for _ in range(3):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_one_call(registry, "cancelled", first_item=kind == "asyncgen")


# --- garbage collection ---------------------------------------------------------------


def test_unstarted_sync_stream_collected_is_finalised_once(registry: CollectorRegistry,
                                                           logs: LogCapture) -> None:
    fn, _ = tracked("generator")
    stream = fn()
    assert value(registry, "provider_inflight_requests", provider="openai") == 1
    del stream
    gc.collect()
    assert_one_call(registry, "cancelled", first_item=False)
    assert only_call(logs)["ttft_ms"] is None


def test_half_consumed_sync_stream_collected_is_finalised_once(registry: CollectorRegistry,
                                                               logs: LogCapture) -> None:
    fn, _ = tracked("generator")
    stream = fn()
    next(stream)
    del stream
    gc.collect()
    gc.collect()
    assert_one_call(registry, "cancelled", first_item=True)
    assert len(logs.events("provider_call")) == 1


@pytest.mark.anyio
async def test_unstarted_async_stream_collected_is_finalised_once(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    fn, _ = tracked("asyncgen")
    stream = fn()
    del stream
    gc.collect()
    assert_one_call(registry, "cancelled", first_item=False)
    assert len(logs.events("provider_call")) == 1


@pytest.mark.anyio
async def test_half_consumed_async_stream_collected_is_finalised_once(
        registry: CollectorRegistry, logs: LogCapture, anyio_backend: str) -> None:
    fn, _ = tracked("asyncgen")
    stream = fn()
    assert await stream.__anext__() == "a"
    with dropped_async_generator(anyio_backend):
        del stream
        gc.collect()
    for _ in range(3):
        await anyio.sleep(0)
    gc.collect()
    assert_one_call(registry, "cancelled", first_item=True)
    assert len(logs.events("provider_call")) == 1


# --- methods ------------------------------------------------------------------------


class Client:
    """An SDK-like client with decorated methods of every flavour."""

    def __init__(self) -> None:
        self.calls = 0

    @track_provider("openai")
    def complete(self, prompt: str, *, model: str) -> str:
        self.calls += 1
        return prompt.upper()

    @classmethod
    @track_provider("openai")
    async def acomplete(cls, prompt: str, *, model: str) -> str:
        return cls.__name__ + prompt

    @staticmethod
    @track_provider("openai")
    def stream(prompt: str, *, model: str) -> Iterator[str]:
        yield from prompt

    @track_provider("openai")
    async def astream(self, prompt: str, *, model: str) -> AsyncIterator[str]:
        for ch in prompt:
            yield ch


@pytest.mark.anyio
async def test_methods_classmethods_and_staticmethods(registry: CollectorRegistry) -> None:
    client = Client()
    assert client.complete("hi", model="m1") == "HI"
    assert client.calls == 1
    assert await Client.acomplete("x", model="m2") == "Clientx"
    assert await client.acomplete("y", model="m2") == "Clienty"
    assert list(Client.stream("ab", model="m3")) == ["a", "b"]
    assert list(client.stream("cd", model="m3")) == ["c", "d"]
    assert [c async for c in client.astream("ef", model="m4")] == ["e", "f"]
    assert requests(registry, "ok", "m1") == 1
    assert requests(registry, "ok", "m2") == 2
    assert requests(registry, "ok", "m3") == 2
    assert requests(registry, "ok", "m4") == 1
    assert value(registry, "provider_time_to_first_token_seconds_count", provider="openai",
                 model="m3") == 2
    assert value(registry, "provider_inflight_requests", provider="openai") == 0


# --- the model label ---------------------------------------------------------------


def test_model_fixed_per_call_or_unknown(registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o")
    def fixed(prompt: str, model: str = "ignored") -> str:
        return prompt

    @track_provider("openai")
    def per_call(prompt: str, model: str = "default-model") -> str:
        return prompt

    @track_provider("openai")
    def no_model(prompt: str) -> str:
        return prompt

    fixed("a", model="gpt-4o-mini")  # the decorator's model wins
    per_call("b", model="gpt-4o-mini")
    per_call("c", model="o3")
    per_call("d")  # the signature's default
    per_call("e", "positional-model")
    no_model("f")
    assert requests(registry, "ok", "gpt-4o") == 1
    assert requests(registry, "ok", "gpt-4o-mini") == 1
    assert requests(registry, "ok", "o3") == 1
    assert requests(registry, "ok", "default-model") == 1
    assert requests(registry, "ok", "positional-model") == 1
    assert requests(registry, "ok", "unknown") == 1
    assert requests(registry, "ok", "ignored") == 0


def test_the_signature_default_is_the_model_and_is_priced(registry: CollectorRegistry,
                                                          logs: LogCapture) -> None:
    """Issue 13, point 1: ``complete("hi")`` records the default, priced, not ``unknown``."""

    @track_provider("openai")
    def complete(prompt: str, model: str = "gpt-4o-mini") -> Any:
        return SimpleNamespace(model="gpt-4o-mini-2024-07-18",
                               usage=SimpleNamespace(prompt_tokens=1000, completion_tokens=100))

    complete("hi")
    assert requests(registry, "ok", "gpt-4o-mini") == 1
    assert requests(registry, "ok", "unknown") == 0
    # gpt-4o-mini: (1000 * 0.15 + 100 * 0.6) / 1e6 = 0.00021
    assert cost(registry, "openai", "gpt-4o-mini") == pytest.approx(0.00021)
    assert unpriced(registry, provider="openai",
                 model="gpt-4o-mini") == 0
    event = only_call(logs)
    assert (event["model"], event["response_model"]) == ("gpt-4o-mini",
                                                        "gpt-4o-mini-2024-07-18")


@pytest.mark.anyio
async def test_a_model_passed_to_a_method_positionally_or_by_default(
        registry: CollectorRegistry) -> None:
    class Client:
        @track_provider("openai")
        def complete(self, prompt: str, model: str = "gpt-4o") -> str:
            return prompt

        @track_provider("openai")
        async def acomplete(self, model: str, prompt: str) -> str:
            return prompt

    client = Client()
    client.complete("a")
    client.complete("b", "o3")
    await client.acomplete("o4-mini", "c")
    assert requests(registry, "ok", "gpt-4o") == 1
    assert requests(registry, "ok", "o3") == 1
    assert requests(registry, "ok", "o4-mini") == 1
    assert requests(registry, "ok", "unknown") == 0


def test_without_a_model_argument_the_responses_model_labels_the_call(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    @track_provider("anthropic")
    def message(prompt: str) -> Any:
        return SimpleNamespace(model="claude-3-5-haiku-20241022", usage=SimpleNamespace(
            input_tokens=1000, output_tokens=100))

    @track_provider("openai")
    def stream(prompt: str) -> Iterator[Any]:
        yield SimpleNamespace(model="gpt-4o-2024-08-06", choices=[], usage=None)
        yield openai_response(1000, 100)

    message("hi")
    list(stream("hi"))
    assert value(registry, "provider_requests_total", provider="anthropic",
                 model="claude-3-5-haiku-20241022", status="ok") == 1
    # claude-3-5-haiku: (1000 * 0.8 + 100 * 4.0) / 1e6 = 0.0012
    assert cost(registry, "anthropic", "claude-3-5-haiku-20241022") == pytest.approx(0.0012)
    assert requests(registry, "ok", "gpt-4o-2024-08-06") == 1
    # gpt-4o: (1000 * 2.5 + 100 * 10) / 1e6 = 0.0035
    assert cost(registry, "openai", "gpt-4o-2024-08-06") == pytest.approx(0.0035)
    assert value(registry, "provider_request_duration_seconds_count", provider="openai",
                 model="unknown") == 0
    assert value(registry, "provider_inflight_requests", provider="openai") == 0


def test_decorator_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="provider"):
        track_provider("")
    with pytest.raises(ValueError, match="model"):
        track_provider("openai", 42)  # type: ignore[arg-type]


# --- usage read from responses ---------------------------------------------------------


def openai_response(prompt: int, completion: int, cached: int | None = None) -> Any:
    details = None if cached is None else SimpleNamespace(cached_tokens=cached)
    return SimpleNamespace(choices=[], usage=SimpleNamespace(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        prompt_tokens_details=details))


def unpriced(registry: CollectorRegistry, reason: str | None = None, **labels: str) -> float:
    """``provider_unpriced_requests_total`` for one reason, or summed over every reason."""
    reasons = [reason] if reason else ["no_price", "no_usage", "cancelled", "error"]
    return sum(value(registry, "provider_unpriced_requests_total", reason=r, **labels)
               for r in reasons)


def tokens(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    return {kind: value(registry, "provider_tokens_total", provider=provider, model=model,
                        type=kind) for kind in ("input", "output", "cached_input")}


def cost(registry: CollectorRegistry, provider: str, model: str) -> float:
    return value(registry, "token_cost_usd_total", provider=provider, model=model)


def test_openai_response_object_with_cached_tokens(registry: CollectorRegistry,
                                                   logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o")
    def chat() -> Any:
        return openai_response(1000, 500, cached=400)

    chat()
    assert tokens(registry, "openai", "gpt-4o") == {"input": 1000, "output": 500,
                                                   "cached_input": 400}
    # gpt-4o: input 2.5, cached_input 1.25, output 10.0 per 1M tokens
    # (600 * 2.5 + 400 * 1.25 + 500 * 10.0) / 1e6 = (1500 + 500 + 5000) / 1e6 = 0.007
    assert cost(registry, "openai", "gpt-4o") == pytest.approx(0.007)
    event = only_call(logs)
    assert (event["input_tokens"], event["output_tokens"], event["cached_input_tokens"]) == (
        1000, 500, 400)
    assert event["cost_usd"] == pytest.approx(0.007)
    assert unpriced(registry, provider="openai",
                 model="gpt-4o") == 0


def test_anthropic_response_object_with_cache_reads_and_writes(
        registry: CollectorRegistry) -> None:
    @track_provider("anthropic", "claude-3-5-haiku-20241022")
    def message() -> Any:
        return SimpleNamespace(content=[], usage=SimpleNamespace(
            input_tokens=100, output_tokens=300, cache_read_input_tokens=2000,
            cache_creation_input_tokens=1000))

    message()
    model = "claude-3-5-haiku-20241022"
    # Anthropic's input_tokens exclude the cache: input = 100 + 2000 read + 1000 written
    assert tokens(registry, "anthropic", model) == {"input": 3100, "output": 300,
                                                   "cached_input": 2000}
    assert value(registry, "provider_tokens_total", provider="anthropic", model=model,
                 type="cache_write") == 1000
    # claude-3-5-haiku: input 0.8, cached_input 0.08, cache_write 1.0, output 4.0:
    # (100 * 0.8 + 2000 * 0.08 + 1000 * 1.0 + 300 * 4.0) / 1e6 = (80 + 160 + 1000 + 1200) / 1e6
    assert cost(registry, "anthropic", model) == pytest.approx(0.00244)


def test_anthropic_usage_with_cache_reads(registry: CollectorRegistry) -> None:
    @track_provider("anthropic")
    def message(model: str) -> Any:
        return SimpleNamespace(usage=SimpleNamespace(input_tokens=200, output_tokens=800,
                                                     cache_read_input_tokens=3000))

    message(model="claude-3-5-sonnet-20241022")
    model = "claude-3-5-sonnet-20241022"
    assert tokens(registry, "anthropic", model) == {"input": 3200, "output": 800,
                                                   "cached_input": 3000}
    # claude-3-5-sonnet: input 3.0, cached_input 0.3, output 15.0:
    # (200 * 3.0 + 3000 * 0.3 + 800 * 15.0) / 1e6 = (600 + 900 + 12000) / 1e6 = 0.0135
    assert cost(registry, "anthropic", model) == pytest.approx(0.0135)


@pytest.mark.anyio
async def test_dict_shaped_usage_from_an_async_call(registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o-mini")
    async def chat() -> dict[str, Any]:
        return {"choices": [], "usage": {"prompt_tokens": 2000, "completion_tokens": 1000,
                                         "prompt_tokens_details": {"cached_tokens": 1000}}}

    await chat()
    assert tokens(registry, "openai", "gpt-4o-mini") == {"input": 2000, "output": 1000,
                                                        "cached_input": 1000}
    # gpt-4o-mini: input 0.15, cached_input 0.075, output 0.6:
    # (1000 * 0.15 + 1000 * 0.075 + 1000 * 0.6) / 1e6 = (150 + 75 + 600) / 1e6 = 0.000825
    assert cost(registry, "openai", "gpt-4o-mini") == pytest.approx(0.000825)


def test_response_without_usage_counts_no_tokens_and_is_unpriced(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o")
    def chat() -> str:
        return "plain text"

    chat()
    assert tokens(registry, "openai", "gpt-4o") == {"input": 0, "output": 0, "cached_input": 0}
    assert cost(registry, "openai", "gpt-4o") == 0
    # never a silent $0: a successful call without usage has an unknown cost
    assert unpriced(registry, "no_usage", provider="openai", model="gpt-4o") == 1
    assert unpriced(registry, provider="openai", model="gpt-4o") == 1
    assert only_call(logs)["cost_usd"] is None


def test_openai_final_stream_chunk_carries_usage(registry: CollectorRegistry,
                                                 logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4.1")
    def stream() -> Iterator[Any]:
        for text in ("Hel", "lo"):
            yield SimpleNamespace(choices=[SimpleNamespace(delta=text)], usage=None)
        # stream_options={"include_usage": True}: a last chunk with no choices
        yield openai_response(5000, 1000, cached=4000)

    chunks = list(stream())
    assert len(chunks) == 3
    assert tokens(registry, "openai", "gpt-4.1") == {"input": 5000, "output": 1000,
                                                    "cached_input": 4000}
    # gpt-4.1: input 2.0, cached_input 0.5, output 8.0:
    # (1000 * 2.0 + 4000 * 0.5 + 1000 * 8.0) / 1e6 = (2000 + 2000 + 8000) / 1e6 = 0.012
    assert cost(registry, "openai", "gpt-4.1") == pytest.approx(0.012)
    assert only_call(logs)["cost_usd"] == pytest.approx(0.012)


@pytest.mark.anyio
async def test_anthropic_stream_events_carry_usage(registry: CollectorRegistry) -> None:
    @track_provider("anthropic", "claude-sonnet-4-20250514")
    async def stream() -> AsyncIterator[Any]:
        yield SimpleNamespace(type="message_start", message=SimpleNamespace(
            usage=SimpleNamespace(input_tokens=1000, output_tokens=1)))
        yield SimpleNamespace(type="content_block_delta", delta=SimpleNamespace(text="hi"))
        yield SimpleNamespace(type="message_delta", usage=SimpleNamespace(output_tokens=200))

    assert len([e async for e in stream()]) == 3
    model = "claude-sonnet-4-20250514"
    assert tokens(registry, "anthropic", model) == {"input": 1000, "output": 200,
                                                   "cached_input": 0}
    # claude-sonnet-4: input 3.0, output 15.0: (1000 * 3.0 + 200 * 15.0) / 1e6 = 0.006
    assert cost(registry, "anthropic", model) == pytest.approx(0.006)


def test_time_per_output_token_of_a_completed_stream(registry: CollectorRegistry,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """(duration - time to first token) / (output tokens - 1), as the GenAI conventions say;
    only for a stream that completed with more than one output token."""
    from instrument import _observe

    @track_provider("openai", "gpt-4o")
    def stream(output: int) -> Iterator[Any]:
        yield SimpleNamespace(choices=["x"], usage=None)
        yield openai_response(100, output)

    @track_provider("openai", "gpt-4o")
    def plain() -> Any:
        return openai_response(100, 50)

    ticks = iter([10.0, 12.0, 22.0])  # start, first item, end
    with monkeypatch.context() as clock:
        clock.setattr(_observe, "perf_counter", lambda: next(ticks))
        clock.setattr(_provider, "perf_counter", lambda: next(ticks))
        list(stream(51))
    list(stream(1))  # one output token: nothing between tokens to time
    s = stream(51)
    next(s)
    s.close()  # stopped early: its output is unknown
    plain()  # no first token
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_time_per_output_token_seconds_count", **labels) == 1
    # (12 s - 2 s) / (51 - 1) = 0.2 s per token
    assert value(registry, "provider_time_per_output_token_seconds_sum",
                 **labels) == pytest.approx(0.2)


# --- record_usage --------------------------------------------------------------------


def test_record_usage_with_cached_tokens_prices_gemini(registry: CollectorRegistry,
                                                       logs: LogCapture) -> None:
    @track_provider("google", "gemini-2.5-flash")
    def generate() -> str:
        assert record_usage(input_tokens=10_000, output_tokens=2000,
                            cached_input_tokens=8000) is True
        return "ok"

    generate()
    assert tokens(registry, "google", "gemini-2.5-flash") == {"input": 10_000, "output": 2000,
                                                             "cached_input": 8000}
    # gemini-2.5-flash: input 0.3, cached_input 0.075, output 2.5:
    # (2000 * 0.3 + 8000 * 0.075 + 2000 * 2.5) / 1e6 = (600 + 600 + 5000) / 1e6 = 0.0062
    assert cost(registry, "google", "gemini-2.5-flash") == pytest.approx(0.0062)
    assert only_call(logs)["cost_usd"] == pytest.approx(0.0062)


def test_record_usage_wins_over_the_returned_usage(registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o")
    def chat() -> Any:
        record_usage(input_tokens=10, output_tokens=20)
        return openai_response(1000, 500)

    chat()
    assert tokens(registry, "openai", "gpt-4o") == {"input": 10, "output": 20,
                                                   "cached_input": 0}


def test_record_usage_wins_over_usage_already_seen_in_a_stream(
        registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o")
    def stream() -> Iterator[Any]:
        yield openai_response(1000, 500)
        record_usage(input_tokens=100, output_tokens=50)
        yield openai_response(2000, 900)  # ignored: the explicit figures win

    list(stream())
    assert tokens(registry, "openai", "gpt-4o") == {"input": 100, "output": 50,
                                                   "cached_input": 0}


def test_record_usage_calls_add_up(registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o")
    def agent() -> None:
        record_usage(input_tokens=100, output_tokens=10)
        record_usage(input_tokens=200, output_tokens=20, cached_input_tokens=100)
        record_usage(api_cost_usd=0.01)
        record_usage(api_cost_usd=0.02)

    agent()
    assert tokens(registry, "openai", "gpt-4o") == {"input": 300, "output": 30,
                                                   "cached_input": 100}
    # (200 * 2.5 + 100 * 1.25 + 30 * 10.0) / 1e6 = (500 + 125 + 300) / 1e6 = 0.000925
    assert cost(registry, "openai", "gpt-4o") == pytest.approx(0.000925)
    assert value(registry, "api_cost_usd_total", provider="openai") == pytest.approx(0.03)


def test_record_usage_takes_cache_writes_and_reasoning_as_parts_of_input_and_output(
        registry: CollectorRegistry) -> None:
    @track_provider("anthropic", "claude-3-5-haiku")
    def agent() -> None:
        record_usage(input_tokens=1000, output_tokens=300, cached_input_tokens=200,
                     cache_write_tokens=500, reasoning_tokens=100)

    agent()
    samples = {s.labels["type"]: s.value for f in registry.collect() for s in f.samples
               if s.name == "provider_tokens_total"}
    assert samples == {"input": 1000, "output": 300, "cached_input": 200, "cache_write": 500,
                       "reasoning": 100}
    # (300 * 0.8 + 200 * 0.08 + 500 * 1.0 + 300 * 4.0) / 1e6: reasoning is inside output
    assert cost(registry, "anthropic", "claude-3-5-haiku") == pytest.approx(0.001956)


@pytest.mark.parametrize("usage", [{"input_tokens": 10, "cached_input_tokens": 6,
                                    "cache_write_tokens": 5},
                                   {"output_tokens": 10, "reasoning_tokens": 11},
                                   {"cache_write_tokens": -1}])
def test_record_usage_refuses_parts_larger_than_their_whole(usage: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"token counts|parts of input_tokens"):
        record_usage(**usage)


def test_record_usage_outside_a_call_records_nothing(registry: CollectorRegistry) -> None:
    assert record_usage(input_tokens=5, output_tokens=5) is False

    @track_provider("openai", "gpt-4o")
    def chat() -> None:
        pass

    chat()
    assert record_usage(input_tokens=5) is False  # the call is over
    assert tokens(registry, "openai", "gpt-4o") == {"input": 0, "output": 0, "cached_input": 0}


@pytest.mark.parametrize("bad", [
    {"input_tokens": -1},
    {"output_tokens": 1.5},
    {"cached_input_tokens": True},
    {"input_tokens": "12"},
    {"cost_usd": -0.1},
    {"cost_usd": float("nan")},
    {"cost_usd": "1"},
    {"cost_usd": float("inf")},
    {"api_cost_usd": -1.0},
    {"api_cost_usd": True},
])
def test_record_usage_rejects_invalid_values(bad: dict[str, Any],
                                             registry: CollectorRegistry) -> None:
    @track_provider("openai", "gpt-4o")
    def chat() -> None:
        record_usage(**bad)

    with pytest.raises(ValueError):
        chat()
    with pytest.raises(ValueError):  # the same mistake is reported outside a call too
        record_usage(**bad)
    assert requests(registry, "error") == 1
    assert tokens(registry, "openai", "gpt-4o") == {"input": 0, "output": 0, "cached_input": 0}


def test_explicit_cost_overrides_the_price_table(registry: CollectorRegistry,
                                                 logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o")
    def priced() -> None:
        record_usage(input_tokens=1000, output_tokens=1000, cost_usd=0.5)

    @track_provider("acme", "in-house-llm")
    def unlisted() -> None:
        record_usage(input_tokens=10, cost_usd=0.25)

    priced()
    unlisted()
    assert cost(registry, "openai", "gpt-4o") == pytest.approx(0.5)
    assert cost(registry, "acme", "in-house-llm") == pytest.approx(0.25)
    assert unpriced(registry, provider="acme",
                 model="in-house-llm") == 0
    assert [e["cost_usd"] for e in logs.events("provider_call")] == [0.5, 0.25]
    assert logs.events("unpriced_model") == []


def test_api_cost_goes_to_its_own_counter(registry: CollectorRegistry) -> None:
    @track_provider("serpapi", "search")
    def search() -> None:
        record_usage(api_cost_usd=0.005, cost_usd=0.0)

    search()
    search()
    assert value(registry, "api_cost_usd_total", provider="serpapi") == pytest.approx(0.01)
    assert cost(registry, "serpapi", "search") == 0


def test_unpriced_model_is_counted_and_warned_once_per_model(registry: CollectorRegistry,
                                                             logs: LogCapture) -> None:
    @track_provider("openai")
    def chat(model: str) -> Any:
        return openai_response(100, 50)

    chat(model="my-finetune")
    chat(model="my-finetune")
    chat(model="other-finetune")
    for model, calls in (("my-finetune", 2), ("other-finetune", 1)):
        assert unpriced(registry, "no_price", provider="openai", model=model) == calls
        assert cost(registry, "openai", model) == 0
        assert tokens(registry, "openai", model)["input"] == 100 * calls
    warnings = logs.events("unpriced_model")
    assert [(w["level"], w["provider"], w["model"]) for w in warnings] == [
        ("WARNING", "openai", "my-finetune"), ("WARNING", "openai", "other-finetune")]
    assert all(e["cost_usd"] is None for e in logs.events("provider_call"))


def test_unpriced_warnings_are_bounded(registry: CollectorRegistry, logs: LogCapture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Model names come from callers: the memory of who was warned about cannot grow forever."""
    monkeypatch.setattr(_provider, "_MAX_WARNED", 2)

    @track_provider("openai")
    def chat(model: str) -> Any:
        return openai_response(1, 1)

    for n in range(4):
        chat(model=f"custom-{n}")
        chat(model=f"custom-{n}")
    assert [w["model"] for w in logs.events("unpriced_model")] == ["custom-0", "custom-1"]
    assert len(_provider._warned_unpriced) == 2
    assert unpriced(registry, provider="openai",
                 model="custom-3") == 2  # still counted


# --- abandoned streams ----------------------------------------------------------------


@pytest.mark.anyio
async def test_abandoned_stream_records_duration_ttft_and_seen_usage(
        registry: CollectorRegistry, logs: LogCapture) -> None:
    @track_provider("openai", "o4-mini")
    async def stream() -> AsyncGenerator[Any, None]:
        yield SimpleNamespace(choices=["x"], usage=SimpleNamespace(
            prompt_tokens=2000, completion_tokens=100,
            prompt_tokens_details=SimpleNamespace(cached_tokens=1000)))
        await anyio.sleep_forever()
        yield "never"

    s = stream()
    await s.__anext__()
    await s.aclose()
    assert_one_call(registry, "cancelled", first_item=True, model="o4-mini")
    assert tokens(registry, "openai", "o4-mini") == {"input": 2000, "output": 100,
                                                    "cached_input": 1000}
    # o4-mini: input 1.1, cached_input 0.275, output 4.4:
    # (1000 * 1.1 + 1000 * 0.275 + 100 * 4.4) / 1e6 = (1100 + 275 + 440) / 1e6 = 0.001815
    assert cost(registry, "openai", "o4-mini") == pytest.approx(0.001815)
    event = only_call(logs)
    assert event["status"] == "cancelled"
    assert event["ttft_ms"] is not None
    assert event["cost_usd"] == pytest.approx(0.001815)


def test_abandoned_stream_without_usage_is_unpriced_not_free(registry: CollectorRegistry) -> None:
    """Issue 13, point 2: the provider bills the prompt of a stream stopped early."""
    fn, _ = tracked("generator")
    stream = fn()
    next(stream)
    stream.close()
    assert unpriced(registry, "cancelled", provider="openai", model="gpt-4o") == 1
    assert unpriced(registry, provider="openai", model="gpt-4o") == 1


@pytest.mark.anyio
async def test_a_call_cancelled_or_failing_after_its_answer_began_is_unpriced(
        registry: CollectorRegistry) -> None:
    cancelled, _ = tracked("coroutine", "block")
    failed_early, _ = tracked("function", "error")
    failed_late, _ = tracked("generator", "error")

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, cancelled, "coroutine")
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    with pytest.raises(Boom):
        failed_early()
    with pytest.raises(Boom):
        list(failed_late())
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert unpriced(registry, "cancelled", **labels) == 1
    # refused before any answer: not billed; failed half-way through its answer: billed
    assert unpriced(registry, "error", **labels) == 1
    assert unpriced(registry, **labels) == 2


# --- logging of prompts and responses -----------------------------------------------------


def test_prompts_and_responses_are_not_logged_by_default(logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o")
    def chat(messages: list[dict[str, str]], api_key: str) -> str:
        return "SECRET ANSWER"

    chat(messages=[{"role": "user", "content": "SECRET PROMPT"}], api_key="sk-live-123")
    assert "SECRET" not in logs.text
    assert "sk-live-123" not in logs.text
    event = only_call(logs)
    assert "request" not in event and "response" not in event


def test_log_io_logs_the_call_with_secrets_redacted(logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o", log_io=True)
    def chat(**kwargs: Any) -> str:
        return "the answer"

    chat(messages=[{"role": "user", "content": "what is 2+2"}], api_key="sk-live-123",
         max_tokens=64, extra_headers={"Authorization": "Bearer abc", "X-Request": "r1"},
         token="tok-456")
    event = only_call(logs)
    assert event["request"]["messages"] == [{"role": "user", "content": "what is 2+2"}]
    assert event["request"]["max_tokens"] == 64
    assert event["request"]["api_key"] == "[REDACTED]"
    assert event["request"]["token"] == "[REDACTED]"
    assert event["request"]["extra_headers"] == {"Authorization": "[REDACTED]",
                                                 "X-Request": "r1"}
    assert event["response"] == "'the answer'"
    for secret in ("sk-live-123", "Bearer abc", "tok-456"):
        assert secret not in logs.text


# --- trace context -------------------------------------------------------------------


def test_provider_span_is_a_child_in_the_callers_trace(registry: CollectorRegistry,
                                                       logs: LogCapture) -> None:
    inside: list[tuple[str | None, str | None]] = []

    @track_provider("openai", "gpt-4o")
    def chat() -> None:
        inside.append((get_trace_id(), get_span_id()))

    with trace_span("handler"):
        outer = (get_trace_id(), get_span_id())
        chat()
        assert (get_trace_id(), get_span_id()) == outer  # restored after the call
    ((trace_id, span_id),) = inside
    assert trace_id == outer[0]
    assert span_id is not None and span_id != outer[1]
    event = only_call(logs)
    assert (event["trace_id"], event["span_id"]) == (trace_id, span_id)


def test_call_outside_a_trace_starts_its_own(registry: CollectorRegistry,
                                             logs: LogCapture) -> None:
    inside: list[str | None] = []

    @track_provider("openai", "gpt-4o")
    def chat() -> None:
        inside.append(get_trace_id())

    chat()
    chat()
    assert get_trace_id() is None
    assert len(set(inside)) == 2 and all(t and HEX32.fullmatch(t) for t in inside)
    assert [e["trace_id"] for e in logs.events("provider_call")] == inside
    assert value(registry, "trace_requests_total") == 2
    # the exemplar on the duration histogram is the call's own trace
    samples = [s for m in registry.collect() if m.name == "provider_request_duration_seconds"
               for s in m.samples if s.exemplar is not None]
    assert {s.exemplar.labels["trace_id"] for s in samples if s.exemplar} <= set(inside)
    assert samples


@pytest.mark.anyio
async def test_stream_steps_run_in_the_creators_trace_and_leak_nothing(
        logs: LogCapture) -> None:
    seen: list[tuple[str | None, str | None]] = []

    @track_provider("openai", "gpt-4o")
    async def stream() -> AsyncIterator[int]:
        for i in range(3):
            seen.append((get_trace_id(), get_span_id()))
            await anyio.sleep(0)
            yield i

    with use_trace_id("request-trace", "request-span"):
        s = stream()

    async def step(n: int) -> None:
        with use_trace_id(f"consumer-{n}", f"consumer-span-{n}"):
            await s.__anext__()
            assert (get_trace_id(), get_span_id()) == (f"consumer-{n}", f"consumer-span-{n}")

    for n in range(3):  # every step from a different task
        async with anyio.create_task_group() as tg:
            tg.start_soon(step, n)
    with pytest.raises(StopAsyncIteration):
        await s.__anext__()
    assert {trace for trace, _ in seen} == {"request-trace"}
    (span_id,) = {span for _, span in seen}
    assert span_id != "request-span"
    event = only_call(logs)
    assert (event["trace_id"], event["span_id"], event["status"]) == (
        "request-trace", span_id, "ok")


def test_sync_stream_consumer_keeps_its_own_span(logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o")
    def stream() -> Generator[str | None, None, None]:
        while True:
            yield get_span_id()

    with trace_span("consumer"):
        mine = get_span_id()
        s = stream()
        first = next(s)
        assert get_span_id() == mine
        assert next(s) == first != mine
        s.close()
        assert get_span_id() == mine


@pytest.mark.anyio
async def test_concurrent_calls_are_isolated(registry: CollectorRegistry,
                                             logs: LogCapture) -> None:
    seen: dict[int, set[str | None]] = {}

    @track_provider("openai", "gpt-4o")
    async def chat(n: int) -> int:
        for _ in range(3):
            seen.setdefault(n, set()).add(get_trace_id())
            await anyio.sleep(0)
        record_usage(input_tokens=n + 1, output_tokens=1)
        return n

    @track_provider("openai", "gpt-4o")
    async def stream(n: int) -> AsyncIterator[int]:
        for _ in range(3):
            seen.setdefault(n, set()).add(get_trace_id())
            await anyio.sleep(0)
            yield n
        record_usage(input_tokens=n + 1, output_tokens=1)

    async def drain(n: int) -> None:
        assert [i async for i in stream(n)] == [n, n, n]

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(chat, n)
        for n in range(20, 40):
            tg.start_soon(drain, n)
    assert all(len(ids) == 1 for ids in seen.values())
    traces = {next(iter(ids)) for ids in seen.values()}
    assert len(traces) == 40
    events = logs.events("provider_call")
    assert len(events) == 40
    # each call's usage went to that call, and its log line carries its own trace
    assert {e["trace_id"]: e["input_tokens"] - 1 for e in events} == {
        next(iter(ids)): n for n, ids in seen.items()}
    assert requests(registry, "ok") == 40
    assert value(registry, "provider_inflight_requests", provider="openai") == 0
    assert tokens(registry, "openai", "gpt-4o")["input"] == sum(range(1, 41))


def test_nested_provider_calls_share_the_trace(logs: LogCapture) -> None:
    @track_provider("openai", "gpt-4o-mini")
    def inner() -> str | None:
        record_usage(input_tokens=1)
        return get_span_id()

    @track_provider("anthropic", "claude-3-5-haiku")
    def outer() -> str | None:
        record_usage(input_tokens=2)
        return inner()

    outer()
    by_provider = {e["provider"]: e for e in logs.events("provider_call")}
    assert by_provider["openai"]["trace_id"] == by_provider["anthropic"]["trace_id"]
    assert by_provider["openai"]["span_id"] != by_provider["anthropic"]["span_id"]
    # record_usage goes to the innermost call only
    assert (by_provider["openai"]["input_tokens"], by_provider["anthropic"]["input_tokens"]) == (
        1, 2)


def test_a_flat_fee_alone_keeps_the_usage_read_from_the_response(
        registry: CollectorRegistry) -> None:
    """record_usage(api_cost_usd=...) must not wipe tokens read from the return value."""

    @track_provider("openai", "gpt-4o")
    def call() -> dict[str, Any]:
        record_usage(api_cost_usd=0.01)
        return {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}

    call()
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_tokens_total", type="input", **labels) == 1000
    # gpt-4o: (1000 * 2.5 + 500 * 10) / 1e6 = 0.0075
    assert value(registry, "token_cost_usd_total", **labels) == pytest.approx(0.0075)
    assert value(registry, "api_cost_usd_total", provider="openai") == pytest.approx(0.01)
    assert unpriced(registry, **labels) == 0


def test_a_call_with_only_a_known_fee_is_not_unpriced(registry: CollectorRegistry) -> None:
    @track_provider("search", "web")
    def search() -> str:
        record_usage(api_cost_usd=0.005)
        return "results"

    search()
    assert unpriced(registry, provider="search",
                 model="web") == 0


def test_usage_is_read_from_pydantic_fields_extras_and_properties() -> None:
    """The fast path for the SDKs' pydantic objects still finds usage wherever it is."""
    import pydantic

    from instrument._provider import read_usage

    class Chunk(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        id: str = "c"

    class WithProperty(pydantic.BaseModel):
        @property
        def usage(self) -> dict[str, int]:
            return {"prompt_tokens": 3, "completion_tokens": 1}

    assert read_usage(Chunk()) is None
    assert read_usage(Chunk(usage={"prompt_tokens": 5, "completion_tokens": 2})) == (
        5, 2, 0, 0, 0, 0)
    assert read_usage(WithProperty()) == (3, 1, 0, 0, 0, 0)
