"""The optional price source: the ``genai-prices`` package (the ``[prices]`` extra).

Imported on the first call it prices, never when ``instrument`` is imported, and
only its bundled data is read: its opt-in refresh (``genai_prices.UpdatePrices``)
is the application's to start. Token counts follow the same convention as ours
(input includes cache reads and writes; output includes reasoning).
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from instrument import _metrics

#: model names come from callers: at most this many (provider, model) names are ever looked
#: up; a name first seen after that is not (the next price source prices it). This bounds
#: both our memory of names and genai-prices' own lookup cache, and a flood of invented
#: names costs no lookup (about 0.3 ms each on the development machine).
_NAME_LIMIT = 1024

_module: Any = None  # the package, False when it is not installed
#: what genai-prices said of each name looked up: its linear rates, TIERED, or UNKNOWN, and
#: when; kept an hour, so a refreshed table (genai-prices' UpdatePrices), a dated price
#: change or a newly listed model is seen within it. At most _NAME_LIMIT names.
_rates: dict[tuple[str, str], tuple[float, Any]] = {}
_RATES_TTL = 3600.0
TIERED, UNKNOWN = "tiered", "unknown"


def _package() -> Any:
    global _module
    if _module is None:
        try:
            import genai_prices
        except Exception:  # not installed, or broken (Python < 3.11): the bundled table prices
            _module = False
        else:
            _module = genai_prices
    return _module or None


def available() -> bool:
    """Whether ``genai-prices`` is installed (imports it on first use)."""
    return _package() is not None


def cost(provider: str, model: str, input_tokens: int, output_tokens: int,
         cached_input_tokens: int, cache_write_tokens: int, cache_write_1h_tokens: int
         ) -> float | None:
    """The call's cost in USD by ``genai-prices``, None when it does not know the model."""
    package = _package()
    if package is None:
        return None
    key = (provider, model)
    found = _rates.get(key)
    if found is None or monotonic() - found[0] > _RATES_TTL:
        if found is None and len(_rates) >= _NAME_LIMIT:
            return None
        try:
            found = _rates[key] = (monotonic(), _linear_rates(package, provider, model))
        except LookupError:
            found = _rates[key] = (monotonic(), UNKNOWN)
        except Exception as err:  # a change in the package: the bundled table prices the call
            _metrics.report_internal_error("genai_prices", err)
            return None
    rates: Any = found[1]
    if rates is UNKNOWN:
        return None
    hour = min(cache_write_1h_tokens, cache_write_tokens)
    if rates is TIERED:  # by context length: genai-prices works each call out itself
        try:
            return _calc(package, provider, model, input_tokens, output_tokens,
                         cached_input_tokens, cache_write_tokens, hour)
        except Exception as err:
            _metrics.report_internal_error("genai_prices", err)
            return None
    rate_in, rate_out, rate_read, rate_write, rate_5m, rate_1h = rates  # USD per million
    writes = (rate_write * cache_write_tokens if not hour
              else rate_5m * (cache_write_tokens - hour) + rate_1h * hour)
    # per million, then divided, as the shipped table prices: the same figures it shows
    total: float = (rate_in * input_tokens + rate_out * output_tokens
                    + rate_read * cached_input_tokens + writes)
    return total / 1e6


def _calc(package: Any, provider: str, model: str, input_tokens: int, output_tokens: int,
          cached_input_tokens: int, cache_write_tokens: int, hour: int) -> float:
    counts = {"input_tokens": input_tokens, "output_tokens": output_tokens,
              "cache_read_tokens": cached_input_tokens, "cache_write_tokens": cache_write_tokens}
    if hour:  # the split by duration, where the usage said it
        counts["cache_write_1h_tokens"] = hour
        counts["cache_write_5m_tokens"] = cache_write_tokens - hour
    found = package.calc_price(package.Usage(**counts), model, provider_id=provider)
    return float(found.total_price)


def _linear_rates(package: Any, provider: str, model: str) -> Any:
    """USD per million tokens of each kind, worked out by genai-prices itself from whole-million
    calls, or TIERED for a model priced in context-length tiers (not linear). A flat price is
    linear in each count, so these rates give exactly what ``calc_price`` would, at a dot
    product's cost instead of its (about 70 us a call on the development machine)."""
    n = 1_000_000
    base = package.calc_price(package.Usage(input_tokens=n), model, provider_id=provider)
    price = getattr(base, "model_price", None)
    tiered = _tiered_type()
    if price is None or tiered is None or any(
            isinstance(getattr(price, field, None), tiered) for field in _TOKEN_PRICES):
        return TIERED  # not known to be flat: each call is worked out by genai-prices

    def per_million(**extra: int) -> float:  # exact in Decimal, then one float
        counts = {"input_tokens": n, **extra}
        total = package.calc_price(package.Usage(**counts), model, provider_id=provider)
        return float(total.total_price - base.total_price)

    rate_in = float(base.total_price)
    rate_out = float(package.calc_price(package.Usage(output_tokens=n), model,
                                        provider_id=provider).total_price)
    return (rate_in, rate_out, per_million(cache_read_tokens=n),
            per_million(cache_write_tokens=n),
            per_million(cache_write_tokens=n, cache_write_5m_tokens=n, cache_write_1h_tokens=0),
            per_million(cache_write_tokens=n, cache_write_1h_tokens=n, cache_write_5m_tokens=0))


_TOKEN_PRICES = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
                 "cache_write_1h_mtok")


def _tiered_type() -> Any:
    try:
        from genai_prices.types import TieredPrices
    except Exception:
        return None
    return TieredPrices
