"""The OpenTelemetry bridge in one process: the span tree, the IDs (equal to the toolkit's,
as its log lines and exemplars carry them), the GenAI attributes and metrics, and one span
ended exactly once on every exit path of the engine."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from instrument import _otel_names as N
from instrument import (
    get_span_id,
    get_trace_id,
    trace_span,
    track_provider,
    track_sse,
    use_trace_id,
)
from instrument._otel import otel_trace_id
from instrument.adapters import otel as bridge
from tests.conftest import LogCapture
from tests.helpers import Boom
from tests.otel.conftest import Otel, hex_parent, hex_span, hex_trace

pytestmark = pytest.mark.no_internal_errors

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
MINI = "gpt-4o-mini"
USAGE = {"prompt_tokens": 1200, "completion_tokens": 80,
         "prompt_tokens_details": {"cached_tokens": 1000}}
COST = 0.000153  # (200 * 0.15 + 1000 * 0.075 + 80 * 0.6) / 1e6, the shipped table
ANSWER = {"model": "gpt-4o-mini-2024-07-18", "usage": USAGE}
_ATTRIBUTES = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
               "gen_ai.request.model": MINI}


def exemplar_trace_ids(registry: CollectorRegistry, family: str) -> set[str]:
    return {s.exemplar.labels["trace_id"] for m in registry.collect() if m.name == family
            for s in m.samples if s.exemplar is not None}


# -- the tree and the IDs ----------------------------------------------------------------

def test_spans_nest_and_carry_the_toolkits_own_trace_and_span_ids(
        otel: Otel, logs: LogCapture) -> None:
    @trace_span("retrieve", k=5)
    def retrieve() -> str | None:
        return get_span_id()

    with trace_span("handler", user="u") as outer:
        inner_id = retrieve()
        outer.set_attribute("hits", 3)
        assert get_span_id() == outer.span_id
    handler, inner = otel.named("handler"), otel.named("retrieve")
    assert hex_trace(handler) == hex_trace(inner) == outer.trace_id
    assert (hex_span(handler), hex_span(inner)) == (outer.span_id, inner_id)
    assert handler.parent is None and hex_parent(inner) == outer.span_id
    assert handler.kind == inner.kind == SpanKind.INTERNAL
    assert handler.attributes is not None and inner.attributes is not None
    assert (handler.attributes["user"], handler.attributes["hits"]) == ("u", 3)
    assert inner.attributes["k"] == 5
    # the toolkit's DEBUG span lines name the same IDs
    lines = {e["span"]: e for e in logs.events("span")}
    assert (lines["handler"]["trace_id"], lines["handler"]["span_id"]) == (
        outer.trace_id, outer.span_id)
    assert (lines["retrieve"]["span_id"], lines["retrieve"]["parent_span_id"]) == (
        inner_id, outer.span_id)


def test_a_provider_span_follows_the_genai_conventions_and_matches_logs_and_exemplars(
        otel: Otel, logs: LogCapture, registry: CollectorRegistry) -> None:
    @track_provider("openai", MINI)
    def call() -> dict[str, Any]:
        return ANSWER

    with trace_span("handler") as outer:
        assert call() is ANSWER  # the user's result, untouched
    span = otel.named(f"chat {MINI}")
    assert span.kind == SpanKind.CLIENT and span.status.status_code == StatusCode.UNSET
    assert hex_parent(span) == outer.span_id
    assert dict(span.attributes or {}) == {
        N.OPERATION_NAME: "chat", N.PROVIDER_NAME: "openai", N.REQUEST_MODEL: MINI,
        N.RESPONSE_MODEL: "gpt-4o-mini-2024-07-18", N.INPUT_TOKENS: 1200,
        N.OUTPUT_TOKENS: 80, N.CACHE_READ_TOKENS: 1000, N.COST_USD: pytest.approx(COST),
        N.PRICE_SOURCE: "bundled", N.OUTCOME: "ok"}
    event = logs.events("provider_call")[0]
    assert (event["trace_id"], event["span_id"]) == (hex_trace(span), hex_span(span))
    assert exemplar_trace_ids(registry, "provider_request_duration_seconds") == {
        hex_trace(span)}


def test_a_streamed_provider_call_records_stream_and_time_to_first_chunk(otel: Otel) -> None:
    @track_provider("openai")
    def stream(model: str) -> Iterator[dict[str, Any]]:
        yield {"model": "gpt-4o-mini-2024-07-18", "choices": []}
        yield {"choices": [], "usage": USAGE}

    assert len(list(stream(MINI))) == 2
    attributes = dict(otel.named(f"chat {MINI}").attributes or {})
    assert attributes[N.REQUEST_STREAM] is True
    assert isinstance(attributes[N.TIME_TO_FIRST_CHUNK], float)
    assert attributes[N.TIME_TO_FIRST_CHUNK] >= 0
    assert (attributes[N.INPUT_TOKENS], attributes[N.OUTPUT_TOKENS]) == (1200, 80)


def test_a_model_named_only_by_the_response_names_the_span_but_not_the_request(
        otel: Otel) -> None:
    @track_provider("openai")
    def call() -> dict[str, Any]:
        return ANSWER

    call()
    span = otel.named("chat gpt-4o-mini-2024-07-18")
    assert N.REQUEST_MODEL not in (span.attributes or {})


# -- every exit path: one span, ended once, with its outcome ----------------------------

def _returns() -> None:
    @track_provider("openai", MINI)
    def call() -> dict[str, Any]:
        return ANSWER

    call()


def _raises() -> None:
    @track_provider("openai", MINI)
    def call() -> None:
        raise Boom("no")

    with pytest.raises(Boom):
        call()


@track_provider("openai", MINI)
def _chunks() -> Iterator[int]:
    yield 1
    yield 2
    yield 3


def _exhausted() -> None:
    assert list(_chunks()) == [1, 2, 3]


def _breaks() -> None:
    for _ in _chunks():
        break  # the stream object is dropped here: collected, finalised once
    gc.collect()


def _closed() -> None:
    stream = _chunks()
    next(stream)
    stream.close()  # GeneratorExit into the source


def _generator_exit_inside() -> None:
    @track_provider("openai", MINI)
    def source() -> Iterator[int]:
        yield 1
        raise GeneratorExit

    stream = source()
    next(stream)
    with pytest.raises(GeneratorExit):
        next(stream)


@track_provider("openai", MINI)
async def _async_chunks() -> AsyncIterator[int]:
    yield 1
    await asyncio.sleep(10)
    yield 2


def _aclosed() -> None:
    async def main() -> None:
        stream = _async_chunks()
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(main())


def _cancelled_task() -> None:
    @track_provider("openai", MINI)
    async def call() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def _cancelled_stream() -> None:
    async def main() -> None:
        async def consume() -> None:
            async for _ in _async_chunks():
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


EXITS: dict[str, tuple[Callable[[], None], str]] = {
    "return": (_returns, "ok"),
    "raise": (_raises, "error"),
    "generator exhausted": (_exhausted, "ok"),
    "consumer breaks out": (_breaks, "closed"),
    "close()": (_closed, "closed"),
    "GeneratorExit from the source": (_generator_exit_inside, "closed"),
    "aclose()": (_aclosed, "closed"),
    "cancelled task": (_cancelled_task, "cancelled"),
    "cancelled while streaming": (_cancelled_stream, "cancelled"),
}


@pytest.mark.parametrize("path", list(EXITS))
def test_every_exit_path_ends_exactly_one_span_once(
        otel: Otel, path: str, caplog: pytest.LogCaptureFixture) -> None:
    run, outcome = EXITS[path]
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        run()
        gc.collect()
    spans = otel.spans
    assert [s.name for s in spans] == [f"chat {MINI}"]
    span = spans[0]
    assert (span.attributes or {})[N.OUTCOME] == outcome
    assert span.end_time is not None
    assert not [r for r in caplog.records if "ended span" in r.getMessage()]  # ended once
    if outcome == "error":
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})[N.ERROR_TYPE] == "Boom"
        assert [e.name for e in span.events] == ["exception"]
        assert (span.events[0].attributes or {})["exception.type"].endswith("Boom")
    else:
        assert span.status.status_code == StatusCode.UNSET
        assert N.ERROR_TYPE not in (span.attributes or {})


def test_a_with_block_that_raises_records_the_exception_and_lets_it_through(
        otel: Otel) -> None:
    error = Boom("mine")
    with pytest.raises(Boom) as caught, trace_span("work"):
        raise error
    assert caught.value is error
    span = otel.named("work")
    assert span.status.status_code == StatusCode.ERROR
    assert (span.attributes or {})[N.OUTCOME] == "error"
    assert [e.name for e in span.events] == ["exception"]


def test_an_sse_stream_is_a_span_with_its_events_and_how_it_ended(otel: Otel) -> None:
    @track_sse("/events")
    def events() -> Iterator[str]:
        yield ": heartbeat\n\n"
        yield "data: 1\n\n"
        yield "data: 2\n\n"

    with trace_span("handler") as outer:
        stream = events()
        next(stream)
        next(stream)
        stream.close()  # the client went away half-way
    span = otel.named("sse /events")
    assert hex_parent(span) == outer.span_id
    attributes = dict(span.attributes or {})
    assert (attributes[N.SSE_EVENTS], attributes[N.SSE_HEARTBEATS]) == (1, 1)
    assert attributes[N.OUTCOME] == "closed"


# -- parents and trace IDs from elsewhere ----------------------------------------------

def test_a_w3c_trace_id_without_a_parent_is_the_root_spans_trace_id(otel: Otel) -> None:
    with use_trace_id(TRACE), trace_span("root") as span:
        pass
    root = otel.named("root")
    assert hex_trace(root) == TRACE == span.trace_id and root.parent is None
    assert hex_span(root) == span.span_id


def test_a_remote_parent_is_the_otel_spans_parent(otel: Otel) -> None:
    with use_trace_id(TRACE, parent_span_id=PARENT), trace_span("child"):
        pass
    child = otel.named("child")
    assert child.parent is not None and child.parent.is_remote
    assert (hex_trace(child), hex_parent(child)) == (TRACE, PARENT)


def test_a_trace_id_that_is_not_w3c_maps_to_a_derived_one_and_rides_as_an_attribute(
        otel: Otel) -> None:
    with use_trace_id("req-abc"), trace_span("outer") as outer, trace_span("inner") as inner:
        assert get_trace_id() == "req-abc"
    first, second = otel.named("outer"), otel.named("inner")
    assert hex_trace(first) == hex_trace(second) == f"{otel_trace_id('req-abc'):032x}"
    assert (first.attributes or {})[N.TRACE_ID] == "req-abc"
    assert outer.trace_id == inner.trace_id == "req-abc"  # the logs keep the caller's ID
    assert hex_parent(second) == outer.span_id == hex_span(first)


def test_otel_spans_of_the_application_and_ours_nest_both_ways(otel: Otel) -> None:
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("theirs") as theirs:
        with trace_span("ours") as ours, tracer.start_as_current_span("inner"):
            pass
    their_id = f"{theirs.get_span_context().span_id:016x}"
    assert ours.trace_id == f"{theirs.get_span_context().trace_id:032x}"
    assert ours.parent_span_id is None  # no toolkit trace before: OpenTelemetry's is joined
    assert hex_parent(otel.named("ours")) == their_id
    assert hex_parent(otel.named("inner")) == ours.span_id


def test_without_an_sdk_the_bridge_changes_nothing() -> None:
    bridge.enable(otel_trace.NoOpTracerProvider())
    try:
        with trace_span("work") as span:
            assert get_span_id() == span.span_id is not None
    finally:
        bridge.disable()


def test_disabled_it_makes_no_span(otel: Otel) -> None:
    bridge.disable()
    with trace_span("work"):
        pass
    assert otel.spans == []


# -- the GenAI metrics -----------------------------------------------------------------

def _metric_names(otel: Otel, monkeypatch: pytest.MonkeyPatch, opt_in: str | None
                  ) -> dict[str, list[Any]]:
    if opt_in is not None:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
        bridge.enable(otel.tracer_provider, otel.meter_provider)

    @track_provider("openai", MINI)
    def stream() -> Iterator[dict[str, Any]]:
        yield {"choices": []}
        yield {"choices": [], "usage": USAGE}

    list(stream())
    return otel.metric_points()


def test_the_genai_metrics_use_the_reference_names_and_bucket_boundaries(
        otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    points = _metric_names(otel, monkeypatch, None)
    assert set(points) == {"gen_ai.client.operation.duration", "gen_ai.client.token.usage",
                           "gen_ai.client.operation.time_to_first_chunk"}
    duration = points["gen_ai.client.operation.duration"][0]
    assert tuple(duration.explicit_bounds) == N.DURATION_BUCKETS
    assert duration.attributes == {N.OPERATION_NAME: "chat", N.PROVIDER_NAME: "openai",
                                   N.REQUEST_MODEL: MINI}
    tokens = {p.attributes[N.TOKEN_TYPE]: p.sum for p in points["gen_ai.client.token.usage"]}
    assert tokens == {"input": 1200, "output": 80}
    assert tuple(points["gen_ai.client.token.usage"][0].explicit_bounds) == N.TOKEN_BUCKETS


def test_the_latest_experimental_opt_in_switches_to_the_newer_metric_names(
        otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    points = _metric_names(otel, monkeypatch, "http,gen_ai_latest_experimental")
    assert set(points) == {
        "gen_ai.client.operation.duration", "gen_ai.client.operation.time_to_first_chunk",
        "gen_ai.client.inference.usage.input_tokens", "gen_ai.client.inference.usage.output_tokens",
        "gen_ai.client.inference.usage.cache_read.input_tokens",
        "gen_ai.client.inference.operation.input_tokens",
        "gen_ai.client.inference.operation.output_tokens"}  # no cache writes, no reasoning
    assert {m.name for m in N.LATEST.all()} >= set(points)
    counted = {name[len("gen_ai.client.inference.usage."):]: (p.value, p.attributes)
               for name, (p,) in points.items() if ".usage." in name}
    modality = {N.TOKEN_MODALITY: "unknown"}
    assert counted == {
        "input_tokens": (1200, {**_ATTRIBUTES, **modality}),
        "output_tokens": (80, {**_ATTRIBUTES, **modality}),
        "cache_read.input_tokens": (1000, {**_ATTRIBUTES, **modality})}
    per_call = {name: (p.sum, tuple(p.explicit_bounds), p.attributes)
                for name, (p,) in points.items() if ".operation." in name and "tokens" in name}
    assert per_call == {
        "gen_ai.client.inference.operation.input_tokens": (1200, N.TOKEN_BUCKETS, _ATTRIBUTES),
        "gen_ai.client.inference.operation.output_tokens": (80, N.TOKEN_BUCKETS, _ATTRIBUTES)}
    assert "gen_ai.client.token.usage" not in points


def test_the_latest_set_counts_a_failed_calls_tokens_but_not_its_per_call_histogram(
        otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    bridge.enable(otel.tracer_provider, otel.meter_provider)

    @track_provider("openai", MINI)
    def stream() -> Iterator[dict[str, Any]]:
        yield {"choices": [], "usage": USAGE}
        raise ConnectionError("cut")

    @track_provider("openai", MINI)
    def refused() -> None:
        raise TimeoutError("no answer, no usage")

    with pytest.raises(ConnectionError):
        list(stream())
    with pytest.raises(TimeoutError):
        refused()
    points = otel.metric_points()
    # the conventions: every call adds to the input and output counters, 0 without usage
    def by_error(name: str) -> dict[str, int]:
        return {p.attributes[N.ERROR_TYPE]: p.value for p in points[name]}

    assert by_error("gen_ai.client.inference.usage.input_tokens") == {
        "ConnectionError": 1200, "TimeoutError": 0}
    assert by_error("gen_ai.client.inference.usage.output_tokens") == {
        "ConnectionError": 80, "TimeoutError": 0}
    assert by_error("gen_ai.client.inference.usage.cache_read.input_tokens") == {
        "ConnectionError": 1000}
    assert not any(".operation.input_tokens" in name for name in points)
    errors = {p.attributes[N.ERROR_TYPE] for p in points["gen_ai.client.operation.duration"]}
    assert errors == {"ConnectionError", "TimeoutError"}




def test_otel_spans_made_inside_a_decorated_call_or_stream_step_are_its_children(
        otel: Otel) -> None:
    """What an OpenTelemetry instrumentation (httpx, a database) records inside our call."""
    tracer = otel.tracer_provider.get_tracer("app")

    @track_provider("openai", MINI)
    def call() -> str | None:
        with tracer.start_as_current_span("http call"):
            return get_span_id()

    @trace_span("stream")
    def stream() -> Iterator[str | None]:
        with tracer.start_as_current_span("read"):
            yield get_span_id()

    ours = call()
    [streamed] = list(stream())
    assert hex_parent(otel.named("http call")) == ours == hex_span(otel.named(f"chat {MINI}"))
    assert hex_parent(otel.named("read")) == streamed == hex_span(otel.named("stream"))
