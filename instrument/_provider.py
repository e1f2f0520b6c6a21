"""``@track_provider``: latency, errors, time to first token, tokens and cost of LLM calls."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from instrument import _attempts, _metrics, _observe, _pricing
from instrument._context import trace_context
from instrument._engine import STATUS, instrument_callable
from instrument._loggate import emit
from instrument._observe import TracedObserver, log_enabled, resolve_metrics
from instrument._redact import redact

F = TypeVar("F", bound=Callable[..., Any])

UNKNOWN_MODEL = "unknown"
_MAX_LOGGED_CHARS = 2000

_RECORDED: str | None = "record_usage"  # the price_source of a cost the caller gave

_warned_unpriced: set[tuple[str, str]] = set()
_MAX_WARNED = 1024
_SERIES_CACHE = 256


class Usage:
    """Token counts of one call. ``input`` includes ``cached_input`` and ``cache_write``
    (OpenAI's convention); ``output`` includes ``reasoning``.

    The zeros are class attributes on purpose: most calls record usage once or
    never, and an instance that only reads its defaults costs no ``__init__``.
    """

    input = 0
    output = 0
    cached_input = 0
    cache_write = 0
    cache_write_1h = 0  # a part of cache_write (Anthropic's 1-hour cache writes)
    reasoning = 0
    cost_usd: float | None = None
    api_cost_usd = 0.0
    explicit = False
    closed = False  # the call has ended: record_usage no longer applies
    #: HTTP attempts and retries seen by an SDK client's hooks (``_attempts``)
    attempts = 0
    retries = 0
    #: the latest rate-limit headers: ``{(kind, "remaining"|"limit"): value}``
    ratelimit: dict[tuple[str, str], float] | None = None

    def merge(self, found: Found) -> None:
        """Usage read from a response or chunk: cumulative, so the latest non-zero figure wins."""
        self.input = found[0] or self.input
        self.output = found[1] or self.output
        self.cached_input = found[2] or self.cached_input
        self.cache_write = found[3] or self.cache_write
        self.reasoning = found[4] or self.reasoning
        self.cache_write_1h = found[5] or self.cache_write_1h

    def record(self, input_tokens: int, output_tokens: int, cached_input_tokens: int,
               cost_usd: float | None, api_cost_usd: float, cache_write_tokens: int = 0,
               reasoning_tokens: int = 0, cache_write_1h_tokens: int = 0) -> None:
        """Usage from ``record_usage``: it replaces what chunks said, and several calls add up.

        A call that passes only a flat ``api_cost_usd`` leaves token reading as it was.
        """
        if not self.explicit and (input_tokens or output_tokens or cached_input_tokens
                                  or cost_usd is not None):
            self.explicit = True
            self.input = self.output = self.cached_input = self.cache_write = self.reasoning = 0
            self.cache_write_1h = 0
        self.input += input_tokens
        self.output += output_tokens
        self.cached_input += cached_input_tokens
        self.cache_write += cache_write_tokens
        self.reasoning += reasoning_tokens
        self.cache_write_1h += cache_write_1h_tokens
        if cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost_usd
        self.api_cost_usd += api_cost_usd


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None and name in attrs:
        return attrs[name]
    if _plain_model(type(obj), name):
        # a pydantic model (the SDKs' responses and chunks) without that field: only an
        # extra can hold it; asking getattr costs microseconds per stream chunk (it raises)
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(name) if extra else None
    return getattr(obj, name, None)


_plain: dict[tuple[type, str], bool] = {}


def _plain_model(cls: type, name: str) -> bool:
    """Whether ``cls`` is a pydantic model whose class defines nothing called ``name`` (no
    property, no method): its instances hold it in ``__dict__`` or extras, or not at all."""
    key = (cls, name)
    found = _plain.get(key)
    if found is None:
        found = "__pydantic_fields__" in dir(cls) and not any(
            name in vars(k) for k in cls.__mro__)
        if len(_plain) < _SERIES_CACHE:
            _plain[key] = found
    return found


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


#: (input incl. cache reads and writes, output incl. reasoning, cache reads, cache writes,
#: reasoning, 1-hour cache writes (a part of cache writes))
Found = tuple[int, int, int, int, int, int]


def _detail(usage: Any, details: str, name: str) -> int:
    found = _field(usage, details)
    return (_int(_field(found, name)) or 0) if found is not None else 0


def read_usage(obj: Any) -> Found | None:
    """Token counts by type (``Found``) from an OpenAI- or Anthropic-style object.

    Looks at ``obj.usage`` (responses and final stream chunks), ``obj.message.usage``
    (Anthropic's ``message_start`` event) and ``obj.response.usage`` (OpenAI's
    Responses API events). None if absent.
    """
    usage = _field(obj, "usage")
    if usage is None:
        for holder in ("message", "response"):
            inner = _field(obj, holder)
            if inner is not None and not isinstance(inner, (str, bytes)):
                usage = _field(inner, "usage")
                if usage is not None:
                    break
    if usage is None or isinstance(usage, (str, bytes, int, float)):
        return None
    prompt = _int(_field(usage, "prompt_tokens"))
    if prompt is not None:  # OpenAI: prompt_tokens includes cached tokens
        return (prompt, _int(_field(usage, "completion_tokens")) or 0,
                _detail(usage, "prompt_tokens_details", "cached_tokens"),
                _detail(usage, "prompt_tokens_details", "cache_write_tokens"),
                _detail(usage, "completion_tokens_details", "reasoning_tokens"), 0)
    anthropic_in = _int(_field(usage, "input_tokens"))
    output = _int(_field(usage, "output_tokens"))
    if anthropic_in is None and output is None:
        return None
    details = _field(usage, "input_tokens_details")  # OpenAI Responses API
    cached = _int(_field(details, "cached_tokens")) if details is not None else None
    if cached is not None:
        return (anthropic_in or 0, output or 0, cached,
                _detail(usage, "input_tokens_details", "cache_write_tokens"),
                _detail(usage, "output_tokens_details", "reasoning_tokens"), 0)
    # Anthropic: input_tokens excludes cache reads and writes; add them back so
    # "input" means all prompt tokens, of which cache reads are "cached_input".
    cache_read = _int(_field(usage, "cache_read_input_tokens")) or 0
    cache_write = _int(_field(usage, "cache_creation_input_tokens")) or 0
    # the writes by duration, where the usage says it: 1-hour writes cost more
    hour = _detail(usage, "cache_creation", "ephemeral_1h_input_tokens") if cache_write else 0
    return ((anthropic_in or 0) + cache_read + cache_write, output or 0, cache_read,
            cache_write, 0, min(hour, cache_write))


def read_model(obj: Any) -> str | None:
    """The model a response names: ``obj.model``, or that of its ``message`` (Anthropic's
    ``message_start``) or ``response`` (OpenAI's Responses API events)."""
    for holder in (obj, _field(obj, "message"), _field(obj, "response")):
        if holder is not None and not isinstance(holder, (str, bytes)):
            found = _field(holder, "model")
            if isinstance(found, str) and found:
                return found
    return None


class Series:
    """The bound metric children one (provider, model) uses on every call: looked up once.

    Only series every call touches are bound up front, so a model that never
    streams shows no time-to-first-token series.
    """

    __slots__ = ("duration", "inflight", "ok", "unpriced")

    def __init__(self, metrics: _metrics.Metrics, provider: str, model: str) -> None:
        self.inflight = metrics.provider_inflight.child(provider)
        self.duration = metrics.provider_duration.child(provider, model)
        self.ok = metrics.provider_requests.child(provider, model, "ok")
        self.unpriced: Any = None  # bound when first needed


# Return values that cannot carry usage: skip looking for it.
_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


class ProviderCall(TracedObserver):
    """One provider call, streamed or not."""

    __slots__ = ("first_at", "kwargs", "log_io", "model", "operation", "provider",
                 "response_model", "series", "usage")

    def __init__(self, metrics: _metrics.Metrics, provider: str, model: str, operation: str,
                 log_io: bool, kwargs: dict[str, Any] | None, series: Series | None = None
                 ) -> None:
        self.usage = Usage()
        TracedObserver.__init__(self, metrics, self.usage)
        self.provider = provider
        self.model = model
        self.operation = operation
        self.log_io = log_io
        self.kwargs = kwargs
        self.first_at = 0.0
        self.response_model: str | None = None
        self.series = series or Series(metrics, provider, model)
        self.series.inflight.inc()
        if _observe.bridge is not None:
            _observe.bridge.start(self)

    def item(self, value: Any) -> Any:
        if not self.first_at:
            self.first_at = perf_counter()
            if type(value) not in _SCALARS:  # the first chunk or event names the model
                self.response_model = read_model(value)
        if not self.usage.explicit and type(value) not in _SCALARS:
            found = read_usage(value)
            if found is not None:
                self.usage.merge(found)
        return value

    def _merge(self, found: Found) -> None:
        self.usage.merge(found)

    def end(self, outcome: str, exc: BaseException | None, result: Any = None) -> None:
        now = perf_counter()
        m, provider, model, u, series = (self.metrics, self.provider, self.model, self.usage,
                                         self.series)
        u.closed = True
        if type(result) not in _SCALARS:
            if not u.explicit:
                found = read_usage(result)
                if found is not None:
                    u.merge(found)
            self.response_model = read_model(result) or self.response_model
        if model == UNKNOWN_MODEL and self.response_model:
            # no model in the call's arguments: label it with the one the provider answered
            model = self.model = self.response_model
            series = self.series = Series(m, provider, model)
        series.inflight.dec()
        status = STATUS[outcome]
        if status == "ok":
            series.ok.inc()
        else:
            m.provider_requests.child(provider, model, status).inc()
            if status == "error" and exc is not None:
                m.provider_errors.child(provider, model, error_type(exc)).inc()
        latency = now - self.start
        ttft = self.first_at - self.start if self.first_at else None
        trace_id = self.trace.trace_id
        series.duration.observe_trace(latency, trace_id)
        if ttft is not None:
            m.provider_ttft.child(provider, model).observe_trace(ttft, trace_id)
            if status == "ok" and self.usage.output > 1:  # the GenAI conventions' definition
                m.provider_tpot.child(provider, model).observe_trace(
                    (latency - ttft) / (self.usage.output - 1), trace_id)
        if u.attempts:
            _attempts.settle(m, provider, model, u)
        cost, source = self._account(status)
        if log_enabled(30 if status == "error" else 20):
            self._log(status, exc, latency, ttft, cost, source, result)

    def _account(self, status: str) -> tuple[float | None, str | None]:
        """Tokens and cost; returns the token cost in USD and where its price came from,
        ``(None, None)`` when it could not be priced."""
        m, provider, model, u = self.metrics, self.provider, self.model, self.usage
        seen = u.input or u.output or u.cached_input
        if seen:
            tokens = m.provider_tokens
            if u.input:
                tokens.child(provider, model, "input").inc(u.input)
            if u.output:
                tokens.child(provider, model, "output").inc(u.output)
            if u.cached_input:
                tokens.child(provider, model, "cached_input").inc(u.cached_input)
            if u.cache_write:
                tokens.child(provider, model, "cache_write").inc(u.cache_write)
            if u.reasoning:
                tokens.child(provider, model, "reasoning").inc(u.reasoning)
        if u.api_cost_usd:
            m.api_cost.child(provider).inc(u.api_cost_usd)
        cost, source = u.cost_usd, _RECORDED
        if cost is None and seen:
            cost, source = _pricing.price_call(provider, model, u.input, u.output,
                                               u.cached_input, u.cache_write, u.cache_write_1h)
        if cost is not None:
            if cost > 0:
                m.token_cost.child(provider, model).inc(cost)
            return cost, source
        # never a silent $0: tokens without a price, or a call the provider may bill that
        # reported neither usage nor a fee (one that succeeded, one stopped or cancelled
        # once sent, one that failed after the answer had begun); a call that failed
        # before any answer (refused, rate-limited, unreachable) is not billed
        if seen:
            reason = "no_price"
        elif u.api_cost_usd:
            return None, None
        elif status == "ok":
            reason = "no_usage"
        elif status == "cancelled":
            reason = "cancelled"
        elif self.first_at:
            reason = "error"
        else:
            return None, None
        series = self.series
        if reason == "no_price":
            if series.unpriced is None:
                series.unpriced = m.unpriced.child(provider, model, reason)
                self._warn_unpriced()
            series.unpriced.inc()
        else:
            m.unpriced.child(provider, model, reason).inc()
        return None, None

    def _warn_unpriced(self) -> None:
        """Once per (provider, model), however many decorated functions use it."""
        key = (self.provider, self.model)
        # model names come from callers, so the memory of warnings is bounded
        if (key in _warned_unpriced or len(_warned_unpriced) >= _MAX_WARNED
                or not log_enabled(30)):
            return
        _warned_unpriced.add(key)
        emit("WARNING", f"no price or no usage for {key[0]}/{key[1]}: its cost is not "
             "counted; add it with instrument.load_prices() or call "
             "record_usage(cost_usd=...)", {"event": "unpriced_model", "provider": key[0],
                                            "model": key[1],
                                            "trace_id": self.trace.trace_id})

    def _log(self, status: str, exc: BaseException | None, latency: float, ttft: float | None,
             cost: float | None, source: str | None, result: Any) -> None:
        u = self.usage
        fields: dict[str, Any] = {
            "event": "provider_call", "provider": self.provider, "model": self.model,
            "response_model": self.response_model,
            "operation": self.operation, "status": status,
            "latency_ms": round(latency * 1000, 3),
            "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
            "input_tokens": u.input, "output_tokens": u.output,
            "cached_input_tokens": u.cached_input, "cache_write_tokens": u.cache_write,
            "reasoning_tokens": u.reasoning, "retries": u.retries,
            "cost_usd": round(cost, 8) if cost is not None else None, "price_source": source,
            "trace_id": self.trace.trace_id, "span_id": self.trace.span_id,
        }
        if exc is not None and status == "error":
            fields["error_type"] = error_type(exc)
        if self.log_io:
            fields["request"] = _truncate(redact(self.kwargs or {}))
            if result is not None:
                fields["response"] = _truncate(result)
        emit("WARNING" if status == "error" else "INFO",
             f"provider call {self.provider}/{self.model} {status}", fields)


def _truncate(value: Any) -> Any:
    text = value if isinstance(value, (dict, list)) else repr(value)
    if isinstance(text, str) and len(text) > _MAX_LOGGED_CHARS:
        return text[:_MAX_LOGGED_CHARS] + "...(truncated)"
    return text


def error_type(exc: BaseException) -> str:
    """The ``error_type`` label: the exception's own ``error_type`` (``http_429``) or its class."""
    found = getattr(exc, "error_type", None)
    return found if isinstance(found, str) and found else type(exc).__name__


def record_usage(input_tokens: int = 0, output_tokens: int = 0, cached_input_tokens: int = 0,
                 cost_usd: float | None = None, api_cost_usd: float = 0.0, *,
                 cache_write_tokens: int = 0, reasoning_tokens: int = 0) -> bool:
    """Attribute usage to the current ``@track_provider`` call.

    ``input_tokens`` includes ``cached_input_tokens`` and ``cache_write_tokens``
    (each priced at its own rate, never twice); ``output_tokens`` includes
    ``reasoning_tokens``. ``cost_usd`` overrides the price table;
    ``api_cost_usd`` is a flat per-request fee. Returns False (and records
    nothing) outside a provider call. Several calls add up.
    """
    # checked before looking for the call, so a mistake shows up wherever it is made
    values = (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
              reasoning_tokens)
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
        raise ValueError(f"token counts must be non-negative integers, got {values!r}")
    if cached_input_tokens + cache_write_tokens > input_tokens or reasoning_tokens > output_tokens:
        raise ValueError("cached_input_tokens and cache_write_tokens are parts of input_tokens, "
                         f"reasoning_tokens a part of output_tokens: got {values!r}")
    for fee in (cost_usd, api_cost_usd):
        if fee is not None and (not isinstance(fee, (int, float)) or isinstance(fee, bool)
                                or not 0 <= fee < float("inf")):
            raise ValueError(f"costs must be finite non-negative numbers, got {fee!r}")
    ctx = trace_context.get()
    usage = ctx.usage if ctx is not None else None
    if usage is None or usage.closed:
        return False
    usage.record(input_tokens, output_tokens, cached_input_tokens, cost_usd, api_cost_usd,
                 cache_write_tokens, reasoning_tokens)
    return True


def _model_parameter(func: Callable[..., Any]) -> tuple[int | None, str | None, bool]:
    """Where a call passes its model: the ``model`` parameter's position (None when it is
    keyword-only or absent), its default if a string, and whether the first parameter is
    ``self``/``cls`` (left out of a bound method's args). Read once, at decoration."""
    try:
        params = list(inspect.signature(inspect.unwrap(getattr(func, "__func__", func)))
                      .parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins and C callables)
        return None, None, False
    for at, param in enumerate(params):
        if param.name == "model":
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            default = param.default if isinstance(param.default, str) and param.default else None
            return (at if positional else None, default,
                    params[0].name in ("self", "cls"))
    return None, None, False


def track_provider(provider: str, model: str | None = None, *, operation: str = "chat",
                   log_io: bool = False, registry: Any = None) -> Callable[[F], F]:
    """Observe calls to an LLM provider: sync or async, plain or streaming.

    ``model`` is fixed here, or read per call from the call's ``model`` argument (keyword,
    positional or the signature's default), else from the response's ``model``.
    Prompts and responses are logged only with ``log_io=True`` (secrets redacted).
    """
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"provider must be a non-empty string, got {provider!r}")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"model must be a string or None, got {model!r}")

    def decorate(func: F) -> F:
        # bound children per model, for the metrics in use (configure() may switch them);
        # model names come from callers, so the cache is bounded
        cache: dict[str, Series] = {}
        cached_for: list[_metrics.Metrics | None] = [None]
        position, default, bound_first = _model_parameter(func)

        def start(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ProviderCall:
            if registry is None:  # the configured metrics; current() creates them on first use
                metrics = _metrics.configured or _metrics.current()
            else:
                metrics = resolve_metrics(registry)
            if metrics is not cached_for[0]:
                cache.clear()
                cached_for[0] = metrics
            name = model or kwargs.get("model")
            if not name and (position is not None or default is not None):
                at = position
                if at is not None and instance is not None and bound_first:
                    at -= 1  # a bound method's args come without self/cls
                name = (args[at] if at is not None and 0 <= at < len(args) else None) or default
            name = name or UNKNOWN_MODEL
            if not isinstance(name, str):
                name = str(name)
            series = cache.get(name)
            if series is None:
                series = Series(metrics, provider, name)
                if len(cache) < _SERIES_CACHE:
                    cache[name] = series
            return ProviderCall(metrics, provider, name, operation, log_io,
                                kwargs if log_io else None, series)

        return instrument_callable(func, start)

    return decorate
