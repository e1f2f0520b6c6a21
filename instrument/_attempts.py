"""Retries, rate-limit headroom and fallbacks of provider calls.

The SDKs retry 429s and 5xx by themselves (``max_retries``), so one observed
call can be several HTTP attempts. ``hook_http_client`` adds a request and a
response hook to the ``httpx``/``httpx2`` client under an SDK client: each
request of an observed call is counted on that call's ``Usage`` (a retry when
the SDK's ``x-stainless-retry-count`` header says so, else any attempt after the
call's first), and each response's rate-limit headers are kept there, the
latest winning. ``settle`` records both when the call ends. ``mark_fallback``
is for gateways that move a call to another provider.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from instrument._context import trace_context
from instrument._loggate import emit
from instrument._observe import log_enabled, resolve_metrics

__all__ = ["hook_http_client", "mark_fallback", "read_ratelimits", "settle"]

#: response header -> (kind, "remaining" or "limit")
RATELIMIT_HEADERS: dict[str, tuple[str, str]] = {
    "x-ratelimit-remaining-requests": ("requests", "remaining"),
    "x-ratelimit-limit-requests": ("requests", "limit"),
    "x-ratelimit-remaining-tokens": ("tokens", "remaining"),
    "x-ratelimit-limit-tokens": ("tokens", "limit"),
}
for _kind, _part in (("requests", "requests"), ("tokens", "tokens"),
                     ("input_tokens", "input-tokens"), ("output_tokens", "output-tokens")):
    for _which in ("remaining", "limit"):
        RATELIMIT_HEADERS[f"anthropic-ratelimit-{_part}-{_which}"] = (_kind, _which)
_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
#: the same, for an httpx ``Headers``' raw (bytes) pairs: only the matching ones get decoded
_RAW_HEADERS = {name.encode(): key for name, key in RATELIMIT_HEADERS.items()}
_RAW_PREFIXES = tuple(prefix.encode() for prefix in _PREFIXES)
_MAX_VALUE_CHARS = 24  # a count of requests or tokens; anything longer is not one
_RETRY_COUNT = "x-stainless-retry-count"  # both official SDKs number their attempts so


def _number(raw: str) -> float | None:
    """A header's count, or None for anything else (empty, negative, not finite, too long)."""
    if len(raw) > _MAX_VALUE_CHARS:
        return None
    try:
        found = float(raw)
    except ValueError:
        return None
    return found if math.isfinite(found) and found >= 0 else None


def read_ratelimits(headers: Any) -> dict[tuple[str, str], float]:
    """``{(kind, "remaining"|"limit"): value}`` from a response's headers; bad values ignored.

    An httpx ``Headers`` is read through its raw byte pairs: its ``items()`` decodes and
    joins every header of the response, which cost more than the rest of this hook."""
    raw_pairs = getattr(headers, "raw", None)
    if isinstance(raw_pairs, list):
        return _read_raw(raw_pairs)
    found: dict[tuple[str, str], float] = {}
    for name, raw in headers.items():
        name = name.lower()
        if not name.startswith(_PREFIXES):
            continue
        key = RATELIMIT_HEADERS.get(name)
        if key is not None and isinstance(raw, str):
            value = _number(raw)
            if value is not None:
                found[key] = value
    return found


def _read_raw(pairs: list[Any]) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for name, raw in pairs:
        if not isinstance(name, bytes) or not name.lower().startswith(_RAW_PREFIXES):
            continue
        key = _RAW_HEADERS.get(name.lower())
        if key is not None and isinstance(raw, bytes):
            value = _number(raw.decode("latin-1"))
            if value is not None:
                found[key] = value  # a header given twice: the last one
    return found


def _observed() -> Any:
    """The ``Usage`` of the provider call observed now, or None."""
    ctx = trace_context.get()
    usage = ctx.usage if ctx is not None else None
    return usage if usage is not None and not usage.closed else None


def _on_request(request: Any) -> None:
    usage = _observed()
    if usage is None:
        return
    try:
        said = int(request.headers.get(_RETRY_COUNT, ""))
    except ValueError:  # no header (another client): every attempt after the call's first
        said = 1 if usage.attempts else 0
    usage.attempts += 1
    if said > 0:
        usage.retries += 1


def _on_response(response: Any) -> None:
    usage = _observed()
    if usage is None:
        return
    found = read_ratelimits(response.headers)
    if found:
        if usage.ratelimit is None:
            usage.ratelimit = found
        else:
            usage.ratelimit.update(found)


async def _on_request_async(request: Any) -> None:
    _on_request(request)


async def _on_response_async(response: Any) -> None:
    _on_response(response)


def hook_http_client(http: Any) -> None:
    """Add the hooks to an ``httpx``/``httpx2`` client (sync or async), once."""
    hooks = http.event_hooks  # the client's own lists: appended to, not replaced
    if any(h in hooks["request"] for h in (_on_request, _on_request_async)):
        return  # hooked already (the class-wide form asks on every call)
    asynchronous = inspect.iscoroutinefunction(http.send)
    on_request = _on_request_async if asynchronous else _on_request
    on_response = _on_response_async if asynchronous else _on_response
    if on_request not in hooks["request"]:
        hooks["request"].append(on_request)
    if on_response not in hooks["response"]:
        hooks["response"].append(on_response)


def settle(metrics: Any, provider: str, model: str, usage: Any) -> None:
    """At a call's end: its retries, and the rate limits its latest response reported."""
    families = metrics.families
    if usage.retries:
        families["provider_retries_total"].child(provider, model).inc(usage.retries)
    limits = usage.ratelimit
    if limits:
        for (kind, which), value in limits.items():
            name = "provider_ratelimit_remaining" if which == "remaining" else (
                "provider_ratelimit_limit")
            families[name].child(provider, model, kind).set(value)


def mark_fallback(from_provider: str, to_provider: str, *, registry: Any = None) -> None:
    """Count a call a gateway moves from one provider to another (after a failure, say).

    Counted in ``provider_fallbacks_total{provider, to_provider}``; both calls are
    counted as provider calls by themselves. Logs a ``provider_fallback`` event
    (with the trace ID) when logging is opted in.
    """
    for name, value in (("from_provider", from_provider), ("to_provider", to_provider)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    metrics = resolve_metrics(registry)
    metrics.families["provider_fallbacks_total"].child(from_provider, to_provider).inc()
    if log_enabled(20):
        ctx = trace_context.get()
        emit("INFO", f"provider fallback {from_provider} -> {to_provider}", {
            "event": "provider_fallback", "provider": from_provider,
            "to_provider": to_provider, "trace_id": ctx.trace_id if ctx is not None else None})
