"""Every OpenTelemetry name the bridge emits, in one table: a conventions change is a change here.

The GenAI semantic conventions are in Development status. What is emitted by default is
what the Python reference implementation emits (``opentelemetry-util-genai`` 1.3b0, used
by ``opentelemetry-instrumentation-genai-openai`` 1.3b0, on semantic conventions 0.66b2);
with ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` the token metrics of the
conventions' main branch (``gen_ai.client.inference.usage.*`` counters and
``gen_ai.client.inference.operation.*`` histograms) replace ``gen_ai.client.token.usage``.
Span attribute names are the same in both sets today; they are listed once, above ``Names``.

Attributes this toolkit adds that no convention defines start with ``instrument.``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

#: the instrumentation scope of every span and metric the bridge makes
SCOPE = "instrument"
#: the value of ``OTEL_SEMCONV_STABILITY_OPT_IN`` (comma-separated) that selects the newer set
LATEST_OPT_IN = "gen_ai_latest_experimental"
#: the versions each set follows, as the docs name them
REFERENCE_VERSION = "opentelemetry-util-genai 1.3b0 (semantic conventions 0.66b2)"
LATEST_VERSION = ("semantic-conventions-genai main branch (gen-ai-token-metrics.md, commit "
                  "066d4a7), gen_ai_latest_experimental")

# -- GenAI span attributes (both sets) ---------------------------------------------------
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_STREAM = "gen_ai.request.stream"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_write.input_tokens"  # util-genai's own constant
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"  # metrics only: "input" or "output"
ERROR_TYPE = "error.type"

# -- HTTP server spans (stable HTTP conventions) ------------------------------------------
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"

# -- this toolkit's own (non-standard) ----------------------------------------------------
COST_USD = "instrument.cost_usd"  # the call's token cost, priced by the toolkit
PRICE_SOURCE = "instrument.price_source"
TRACE_ID = "instrument.trace_id"  # the toolkit's trace ID when it is not W3C-shaped
OUTCOME = "instrument.outcome"  # ok, error, cancelled (task cancelled) or closed (stopped early)
RETRIES = "instrument.retries"
SSE_ENDPOINT = "instrument.sse.endpoint"
SSE_EVENTS = "instrument.sse.events"
SSE_HEARTBEATS = "instrument.sse.heartbeats"
SSE_DISCONNECTED = "instrument.sse.client_disconnected"


class Metric(NamedTuple):
    name: str
    unit: str
    description: str
    buckets: tuple[float, ...]


#: the conventions' advisory bucket boundaries (seconds; tokens)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)


class Names(NamedTuple):
    """One set of metric names (the span attributes above are shared). Token fields name
    the ``instrument._provider.Usage`` count each instrument records."""

    duration: Metric
    time_to_first_chunk: Metric
    #: one histogram split by ``gen_ai.token.type`` (the reference set); None in the latest
    token_usage: Metric | None = None
    #: counters, one per token category, with ``gen_ai.token.modality`` (the latest set)
    usage_counters: tuple[tuple[str, Metric], ...] = ()
    #: per-call histograms of successful calls, no modality (the latest set)
    token_histograms: tuple[tuple[str, Metric], ...] = ()

    def all(self) -> tuple[Metric, ...]:
        return (self.duration, self.time_to_first_chunk,
                *((self.token_usage,) if self.token_usage else ()),
                *(m for _, m in self.usage_counters), *(m for _, m in self.token_histograms))


_DURATION = Metric("gen_ai.client.operation.duration", "s", "GenAI operation duration",
                   DURATION_BUCKETS)
_FIRST_CHUNK = Metric("gen_ai.client.operation.time_to_first_chunk", "s",
                      "Time to receive the first chunk of a streamed response", DURATION_BUCKETS)
REFERENCE = Names(_DURATION, _FIRST_CHUNK,
                  token_usage=Metric("gen_ai.client.token.usage", "{token}",
                                     "Number of input and output tokens used by GenAI clients",
                                     TOKEN_BUCKETS))
#: the conventions' main branch (semantic-conventions-genai docs/gen-ai/gen-ai-token-metrics.md,
#: as of commit 066d4a7): duration and time to first chunk keep their names;
#: ``gen_ai.client.token.usage`` and ``gen_ai.token.type`` give way to a counter per token
#: category (the cost proxy) and per-call histograms of input and output tokens
LATEST = Names(
    _DURATION, _FIRST_CHUNK,
    usage_counters=tuple(
        (field, Metric(f"gen_ai.client.inference.usage.{name}", "{token}", description, ()))
        for field, name, description in (
            ("input", "input_tokens", "Input tokens used (cached and cache writes included)"),
            ("output", "output_tokens", "Output tokens used (reasoning included)"),
            ("cached_input", "cache_read.input_tokens", "Input tokens read from a cache"),
            ("cache_write", "cache_write.input_tokens", "Input tokens written to a cache"),
            ("reasoning", "reasoning.output_tokens", "Output tokens spent reasoning"))),
    token_histograms=tuple(
        (field, Metric(f"gen_ai.client.inference.operation.{field}_tokens", "{token}",
                       f"{field.capitalize()} tokens of one inference operation",
                       TOKEN_BUCKETS))
        for field in ("input", "output")),
)
#: the usage counters' modality: the toolkit cannot tell text tokens from image or audio ones
TOKEN_MODALITY = "gen_ai.token.modality"
UNKNOWN_MODALITY = "unknown"
#: the counters added for every call, 0 when no usage came (the subsets only when non-zero)
ALWAYS_COUNTED = ("input", "output")


def selected(environ: dict[str, str] | None = None) -> Names:
    """The set ``OTEL_SEMCONV_STABILITY_OPT_IN`` selects (read when the bridge is enabled)."""
    value = (os.environ if environ is None else environ).get("OTEL_SEMCONV_STABILITY_OPT_IN", "")
    return LATEST if LATEST_OPT_IN in {v.strip() for v in value.split(",")} else REFERENCE
