"""The price table: turns an LLM call's token usage into US dollars.

Prices are USD per million tokens, keyed ``provider/model``. The package ships
a dated table (``data/prices.json``); applications extend or replace it with
:func:`load_prices`. A model that cannot be priced gives ``None``, never
``0.0``, so callers can report "unpriced" instead of a free call.

Token convention (OpenAI's): ``input_tokens`` *includes* the cached ones.
Anthropic reports ``input_tokens`` *excluding* cache reads, so its usage reader
adds ``cache_read_input_tokens`` back before calling :func:`cost_usd`.
Cache writes (Anthropic's ``cache_creation_input_tokens``) are a part of the input
too, priced at ``cache_write`` where the table gives it (Anthropic's 5-minute
rate, 1.25x input), else at the input rate; those the usage reports as 1-hour
writes at ``cache_write_1h`` (2x input), else at ``cache_write``.

Where a call's price comes from (``price_call``, the log line's ``price_source``):
entries added with :func:`load_prices` first (``load_prices``); then the
``genai-prices`` package when it is installed (the ``[prices]`` extra) and not
turned off with :func:`use_genai_prices` (``genai-prices``); then the shipped
table (``bundled``). ``load_prices(..., replace=True)`` makes the loaded table
the only source.

The active table is an immutable :class:`PriceTable` swapped by one reference
assignment, so readers on the hot path never take a lock.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib.resources import files
from types import MappingProxyType

from instrument import _genai

UNIT = "USD per 1M tokens"

# Lookups run once per provider call; model strings come from responses, so
# the set is small in practice but unbounded in principle (a gateway forwards
# whatever clients send). Past this size we stop remembering new names.
_MEMO_LIMIT = 1024

# SDKs and gateways name the same provider differently; keys and lookups both
# go through this map so a user's "gemini/..." entry still matches.
_PROVIDER_ALIASES = {
    "gemini": "google",
    "google-genai": "google",
    "google_genai": "google",
    "gcp.gemini": "google",
    "mistralai": "mistral",
    "mistral_ai": "mistral",
}

# Snapshot suffixes that do not change the list price: OpenAI dates
# (-2024-08-06), Anthropic dates (-20241022), Mistral and old OpenAI YYMM/MMDD
# (-2411, -0125), Gemini revisions (-002), aliases (-latest) and Vertex's
# "@20241022". Stripped repeatedly, so "-2411-latest" also goes.
_VERSION_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|-\d{3}|-latest|@[\w.-]*)$")

_PRICE_FIELDS = frozenset({"input", "cached_input", "cache_write", "cache_write_1h", "output"})
_DOCUMENT_FIELDS = frozenset({"as_of", "unit", "source", "notes", "models"})


@dataclass(frozen=True)
class Price:
    """List price of one model, in USD per million tokens.

    ``cached_input`` is the rate for input tokens served from the provider's
    prompt cache; ``None`` means the provider gives no discount. ``cache_write``
    is the rate for input tokens written to the cache; ``None`` means the input rate.
    ``cache_write_1h`` is the rate of 1-hour cache writes (Anthropic); ``None`` means
    ``cache_write``'s.
    """

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input", "cache_write", "cache_write_1h"):
            value = getattr(self, name)
            if value is None and name not in ("input", "output"):
                continue
            # bool is an int subclass; True as a price is a config mistake; an int too
            # large for a float (1e400 written out) is no finite price either.
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not _finite(value)
                or value < 0
            ):
                raise ValueError(
                    f"{name!r} must be a finite, non-negative number of {UNIT}, got {value!r}"
                )
            object.__setattr__(self, name, float(value))

    @property
    def cached_rate(self) -> float:
        """The rate for cached input tokens, falling back to ``input``."""
        return self.input if self.cached_input is None else self.cached_input

    @property
    def cache_write_rate(self) -> float:
        """The rate for input tokens written to the prompt cache, falling back to ``input``."""
        return self.input if self.cache_write is None else self.cache_write

    @property
    def cache_write_1h_rate(self) -> float:
        """The rate for 1-hour cache writes, falling back to ``cache_write_rate``."""
        return self.cache_write_rate if self.cache_write_1h is None else self.cache_write_1h


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def cost_usd(
    price: Price, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0,
    cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
) -> float:
    """Cost of one call in USD.

    ``cached_input_tokens`` are a part of ``input_tokens`` (OpenAI's
    ``prompt_tokens`` includes ``cached_tokens``), so they are priced once, at
    the cached rate, and the rest of the input at the full rate. Callers with
    Anthropic usage, where ``input_tokens`` excludes cache reads, pass
    ``input_tokens + cache_read_input_tokens``. ``cache_write_1h_tokens`` are a
    part of ``cache_write_tokens``, priced at the 1-hour rate.

    Negative counts are treated as zero: this runs inside telemetry, where a
    malformed usage block must not raise into the user's call.
    """
    cached = max(cached_input_tokens, 0)
    written = max(cache_write_tokens, 0)
    hour = min(max(cache_write_1h_tokens, 0), written)
    uncached = max(input_tokens - cached - written, 0)
    output = max(output_tokens, 0)
    return (uncached * price.input + cached * price.cached_rate
            + (written - hour) * price.cache_write_rate + hour * price.cache_write_1h_rate
            + output * price.output) / 1e6


def _canonical_provider(provider: str) -> str:
    name = provider.strip().lower()
    return _PROVIDER_ALIASES.get(name, name)


def _canonical_key(key: object, origin: str) -> str:
    if isinstance(key, str):
        provider, sep, model = key.strip().lower().partition("/")
        provider, model = provider.strip(), model.strip()
        if sep and provider and model:
            return f"{_canonical_provider(provider)}/{model}"
    raise ValueError(f"{origin}: key {key!r} must be 'provider/model', e.g. 'openai/gpt-4o'")


def _parse_price(key: str, raw: object, origin: str) -> Price:
    if isinstance(raw, Price):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{origin}: price of {key!r} must be an object with 'input', 'output' and "
            f"optionally 'cached_input', got {type(raw).__name__}"
        )
    # A misspelt field would otherwise silently price cached tokens at the full rate.
    unknown = sorted(str(field) for field in raw if field not in _PRICE_FIELDS)
    if unknown:
        raise ValueError(f"{origin}: price of {key!r} has unknown field(s) {unknown}")
    missing = sorted(field for field in ("input", "output") if field not in raw)
    if missing:
        raise ValueError(f"{origin}: price of {key!r} lacks {missing}")
    try:
        return Price(raw["input"], raw["output"], raw.get("cached_input"),
                     raw.get("cache_write"), raw.get("cache_write_1h"))
    except ValueError as exc:
        raise ValueError(f"{origin}: price of {key!r}: {exc}") from None


def _parse_models(models: Mapping[str, object], origin: str) -> dict[str, Price]:
    parsed: dict[str, Price] = {}
    for key, raw in models.items():
        canonical = _canonical_key(key, origin)
        if canonical in parsed:
            raise ValueError(f"{origin}: {key!r} is listed twice (as {canonical!r})")
        parsed[canonical] = _parse_price(canonical, raw, origin)
    return parsed


def _parse_document(data: object, origin: str) -> tuple[dict[str, Price], str | None]:
    """Accept the shipped file's shape or a bare ``{"provider/model": {...}}`` mapping.

    The two cannot be confused: a bare mapping's keys all contain ``/``, so a
    top-level ``"models"`` key marks the full document.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{origin}: expected a JSON object, got {type(data).__name__}")
    if "models" not in data:
        return _parse_models(data, origin), None
    unknown = sorted(str(field) for field in data if field not in _DOCUMENT_FIELDS)
    if unknown:
        raise ValueError(f"{origin}: unknown top-level field(s) {unknown}")
    # Per-1K prices are the classic off-by-1000 mistake; refuse any other unit.
    unit = data.get("unit", UNIT)
    if unit != UNIT:
        raise ValueError(f"{origin}: 'unit' must be {UNIT!r}, got {unit!r}")
    as_of = data.get("as_of")
    if as_of is not None:
        try:
            date.fromisoformat(as_of)
        except (TypeError, ValueError):
            raise ValueError(
                f"{origin}: 'as_of' must be a date like '2025-07-01', got {as_of!r}"
            ) from None
    models = data["models"]
    if not isinstance(models, Mapping):
        raise ValueError(f"{origin}: 'models' must be an object, got {type(models).__name__}")
    return _parse_models(models, origin), as_of


class PriceTable:
    """An immutable set of prices with the matching rules for model names.

    Build a new table rather than changing one: readers hold references to it
    without a lock.
    """

    __slots__ = ("_memo", "_prices", "as_of")

    def __init__(
        self, prices: Mapping[str, Price | Mapping[str, float]], *, as_of: str | None = None
    ) -> None:
        self._prices: Mapping[str, Price] = MappingProxyType(_parse_models(prices, "price table"))
        #: the date the prices were taken, when known
        self.as_of = as_of
        self._memo: dict[tuple[str, str], Price | None] = {}

    @property
    def prices(self) -> Mapping[str, Price]:
        """The entries, keyed by canonical ``provider/model`` (read-only)."""
        return self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models, as_of={self.as_of!r})"

    def merged(self, other: PriceTable) -> PriceTable:
        """A new table with ``other``'s entries added to or overriding this one's.

        ``as_of`` stays this table's: it dates the base prices, not the additions.
        """
        return PriceTable({**self._prices, **other._prices}, as_of=self.as_of)

    def lookup(self, provider: str, model: str) -> Price | None:
        """The price of ``model`` from ``provider``, or ``None`` when unknown.

        Matching, case-insensitive and within the provider only (the same name
        can mean different models at different providers):

        1. the exact name, after dropping a provider or ``models/`` prefix the
           SDK put in the model (``openai/gpt-4o``, ``models/gemini-1.5-pro``);
        2. the name without snapshot suffixes (``gpt-4o-2024-08-06``,
           ``claude-3-5-sonnet-latest``, ``gemini-1.5-pro-002``);
        3. the longest known prefix ending at a ``-`` (``gpt-4o-mini-search``
           is ``gpt-4o-mini``, not ``gpt-4o``).

        Step 1 before step 2 lets a table price one snapshot differently
        (``openai/gpt-4o-2024-05-13``).
        """
        key = (provider, model)
        try:
            return self._memo[key]
        except KeyError:
            pass
        price = self._resolve(provider, model)
        # Unlocked check-then-set can overshoot by a few entries under
        # contention; the bound only has to stop unbounded growth.
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[key] = price
        return price

    def _resolve(self, provider: str, model: str) -> Price | None:
        if not provider or not model:
            return None
        vendor = _canonical_provider(provider)
        name = model.strip().lower()
        while True:
            head, sep, rest = name.partition("/")
            if not (sep and rest and (head == "models" or _canonical_provider(head) == vendor)):
                break
            name = rest
        prices = self._prices
        price = prices.get(f"{vendor}/{name}")
        if price is not None:
            return price
        while True:
            shorter = _VERSION_SUFFIX.sub("", name)
            if shorter == name or not shorter:
                break
            name = shorter
        parts = name.split("-")
        for end in range(len(parts), 0, -1):
            price = prices.get(f"{vendor}/{'-'.join(parts[:end])}")
            if price is not None:
                return price
        return None


def _read_json(path: str | os.PathLike[str], origin: str) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ValueError(f"cannot read {origin}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past Python's digit limit
        raise ValueError(f"{origin} is not valid JSON: {exc}") from exc


# Written only under _lock; read without it (a reference read is atomic).
_lock = threading.Lock()
_shipped: PriceTable | None = None
_active: PriceTable | None = None
_user: PriceTable | None = None  # what load_prices() added, looked up before any other source
_replaced = False  # load_prices(replace=True): the loaded table is the only source
_genai_wanted = True  # use_genai_prices()

BUNDLED, GENAI, LOADED = "bundled", "genai-prices", "load_prices"


def _shipped_table() -> PriceTable:
    """The packaged table, parsed once. Caller holds ``_lock``."""
    global _shipped
    if _shipped is None:
        resource = files("instrument") / "data" / "prices.json"
        origin = "the shipped price file instrument/data/prices.json"
        prices, as_of = _parse_document(json.loads(resource.read_text(encoding="utf-8")), origin)
        _shipped = PriceTable(prices, as_of=as_of)
    return _shipped


def _active_table() -> PriceTable:
    """Caller holds ``_lock``."""
    global _active
    if _active is None:
        _active = _shipped_table()
    return _active


def price_table() -> PriceTable:
    """The active price table (the shipped one until :func:`load_prices`)."""
    table = _active
    if table is not None:
        return table
    with _lock:
        return _active_table()


def get_price(provider: str, model: str) -> Price | None:
    """The active price of ``model`` from ``provider``, or ``None`` when unknown."""
    return price_table().lookup(provider, model)


def load_prices(
    source: str | os.PathLike[str] | Mapping[str, object], *, replace: bool = False
) -> None:
    """Add prices to the active table, or with ``replace=True`` replace it.

    ``source`` is a path to a JSON file or a mapping, either shaped like the
    shipped file (``{"as_of": ..., "models": {...}}``) or a bare
    ``{"provider/model": {"input": ..., "output": ..., "cached_input": ...}}``,
    prices in USD per million tokens. Entries override shipped ones with the
    same key. A replacing table takes its ``as_of`` from the source (``None``
    for a bare mapping); an extended one keeps the shipped date.

    Raises ``ValueError`` for an unreadable file, invalid JSON, a wrong shape,
    a key without ``/`` or a negative or non-numeric price; the active table is
    then unchanged, since it is only swapped after the new one is complete.
    """
    global _active, _user, _replaced
    if isinstance(source, (str, os.PathLike)):
        origin = f"price file {os.fspath(source)!r}"
        data = _read_json(source, origin)
    elif isinstance(source, Mapping):
        origin = "price mapping"
        data = source
    else:
        raise ValueError(
            f"load_prices() takes a JSON file path or a mapping, got {type(source).__name__}"
        )
    prices, as_of = _parse_document(data, origin)
    loaded = PriceTable(prices, as_of=as_of)
    # The lock serialises writers so two concurrent extensions both land.
    with _lock:
        _active = loaded if replace else _active_table().merged(loaded)
        _user = loaded if replace or _user is None else _user.merged(loaded)
        _replaced = _replaced or replace


def reset_prices() -> None:
    """Go back to the shipped prices, and to ``genai-prices`` where installed (for tests and
    reconfiguration)."""
    global _active, _user, _replaced, _genai_wanted
    with _lock:
        _active = _shipped_table()
        _user, _replaced, _genai_wanted = None, False, True


def use_genai_prices(enabled: bool = True) -> bool:
    """Price calls with the ``genai-prices`` package when installed (the default), or not.

    Returns whether it is now used: False when turned off or not installed
    (``pip install 'llm-instrument[prices]'``, Python 3.11+).
    """
    global _genai_wanted
    _genai_wanted = bool(enabled)
    return _genai_wanted and _genai.available()


def price_call(provider: str, model: str, input_tokens: int, output_tokens: int,
               cached_input_tokens: int = 0, cache_write_tokens: int = 0,
               cache_write_1h_tokens: int = 0) -> tuple[float | None, str | None]:
    """A call's cost in USD and its source (``load_prices``, ``genai-prices`` or ``bundled``);
    ``(None, None)`` when no source prices the model."""
    counts = (input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
              cache_write_1h_tokens)
    user = _user
    if user is not None:
        price = user.lookup(provider, model)
        if price is not None:
            return cost_usd(price, *counts), LOADED
        if _replaced:
            return None, None
    if _genai_wanted:
        found = _genai.cost(_canonical_provider(provider), model, *counts)
        if found is not None:
            return found, GENAI
    shipped = _shipped
    if shipped is None:
        with _lock:
            shipped = _shipped_table()
    price = shipped.lookup(provider, model)
    if price is not None:
        return cost_usd(price, *counts), BUNDLED
    return None, None
