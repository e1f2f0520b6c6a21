"""The optional price source: the ``genai-prices`` package (the ``[prices]`` extra).

Imported on the first call it prices, never when ``instrument`` is imported, and
only its bundled data is read: its opt-in refresh (``genai_prices.UpdatePrices``)
is the application's to start. Token counts follow the same convention as ours
(input includes cache reads and writes; output includes reasoning).
"""

from __future__ import annotations

from typing import Any

from instrument import _metrics

#: model names come from callers: at most this many (provider, model) names are ever looked
#: up; a name first seen after that is not (the next price source prices it). This bounds
#: both our memory of names and genai-prices' own lookup cache, and a flood of invented
#: names costs no lookup (about 0.3 ms each on the development machine).
_NAME_LIMIT = 1024

_module: Any = None  # the package, False when it is not installed
_misses: set[tuple[str, str]] = set()
_looked_up: set[tuple[str, str]] = set()


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
    key = (provider, model)
    if package is None or key in _misses:
        return None
    if key not in _looked_up:
        if len(_looked_up) >= _NAME_LIMIT:
            return None
        _looked_up.add(key)
    counts = {"input_tokens": input_tokens, "output_tokens": output_tokens,
              "cache_read_tokens": cached_input_tokens, "cache_write_tokens": cache_write_tokens}
    if cache_write_1h_tokens:  # the split by duration, where the usage said it
        hour = min(cache_write_1h_tokens, cache_write_tokens)
        counts["cache_write_1h_tokens"] = hour
        counts["cache_write_5m_tokens"] = cache_write_tokens - hour
    try:
        found = package.calc_price(package.Usage(**counts), model, provider_id=provider)
    except LookupError:
        _misses.add(key)  # a subset of _looked_up: bounded with it
        return None
    except Exception as err:  # a change in the package: the bundled table prices the call
        _metrics.report_internal_error("genai_prices", err)
        return None
    return float(found.total_price)
