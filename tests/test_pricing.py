"""Tests for the price table: cost arithmetic, model-name matching, loading and the shipped data."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from instrument._pricing import (
    Price,
    PriceTable,
    cost_usd,
    get_price,
    load_prices,
    price_table,
    reset_prices,
)


@pytest.fixture(autouse=True)
def _restore_prices() -> Iterator[None]:
    yield
    reset_prices()


def shipped(key: str) -> Price:
    return price_table().prices[key]


# --- cost arithmetic -------------------------------------------------------


def test_cost_gpt_4o_prices_cached_part_of_input_at_cached_rate() -> None:
    # 1000 input of which 400 cached, 500 output:
    # (600*2.5 + 400*1.25 + 500*10) / 1e6 = (1500 + 500 + 5000) / 1e6 = 0.007
    price = get_price("openai", "gpt-4o")
    assert price is not None
    assert cost_usd(price, 1000, 500, cached_input_tokens=400) == pytest.approx(0.007)


def test_cost_claude_with_cache_reads_added_back_to_input() -> None:
    # Anthropic usage: input_tokens=200 (excludes cache reads), cache_read=3000, output=800.
    # The reader passes input 200+3000=3200 with 3000 cached:
    # (200*3 + 3000*0.3 + 800*15) / 1e6 = (600 + 900 + 12000) / 1e6 = 0.0135
    price = get_price("anthropic", "claude-3-5-sonnet-20241022")
    assert price is not None
    assert cost_usd(price, 3200, 800, cached_input_tokens=3000) == pytest.approx(0.0135)


def test_cost_gemini_2_5_flash_with_cached_tokens() -> None:
    # 10000 input of which 8000 cached, 2000 output:
    # (2000*0.3 + 8000*0.075 + 2000*2.5) / 1e6 = (600 + 600 + 5000) / 1e6 = 0.0062
    price = get_price("google", "gemini-2.5-flash")
    assert price is not None
    assert cost_usd(price, 10_000, 2000, cached_input_tokens=8000) == pytest.approx(0.0062)


def test_cost_mistral_large_without_cache() -> None:
    # 1M input, 1M output: 2.0 + 6.0 = 8.0
    price = get_price("mistral", "mistral-large-latest")
    assert price is not None
    assert cost_usd(price, 1_000_000, 1_000_000) == pytest.approx(8.0)


def test_cost_fully_cached_input_is_not_double_counted() -> None:
    # 1000 input, all cached, no output: 1000*1.25 / 1e6 = 0.00125 (not + 1000*2.5)
    assert cost_usd(Price(2.5, 10.0, 1.25), 1000, 0, 1000) == pytest.approx(0.00125)


def test_cost_without_cached_rate_prices_cached_tokens_at_input_rate() -> None:
    # (600*2 + 400*2 + 100*4) / 1e6 = 2400 / 1e6
    assert cost_usd(Price(2.0, 4.0), 1000, 100, 400) == pytest.approx(0.0024)


def test_cost_cached_above_input_clamps_uncached_to_zero() -> None:
    # uncached = max(100 - 300, 0) = 0; 300*1 / 1e6
    assert cost_usd(Price(10.0, 20.0, 1.0), 100, 0, 300) == pytest.approx(0.0003)


def test_cost_negative_counts_count_as_zero() -> None:
    assert cost_usd(Price(1.0, 1.0, 0.5), -5, -5, -5) == 0.0


# --- Price -----------------------------------------------------------------


def test_price_coerces_ints_and_defaults_cached_rate_to_input() -> None:
    price = Price(3, 15)
    assert isinstance(price.input, float)
    assert price.cached_input is None
    assert price.cached_rate == 3.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": -1.0, "output": 1.0},
        {"input": 1.0, "output": math.inf},
        {"input": math.nan, "output": 1.0},
        {"input": 1.0, "output": 1.0, "cached_input": -0.1},
        {"input": "1", "output": 1.0},
        {"input": True, "output": 1.0},
    ],
)
def test_price_rejects_invalid_rates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Price(**kwargs)


# --- matching --------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "key"),
    [
        ("openai", "gpt-4o", "openai/gpt-4o"),
        ("OpenAI", " GPT-4o ", "openai/gpt-4o"),
        ("openai", "openai/gpt-4o", "openai/gpt-4o"),
        ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("openai", "gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo"),
        ("openai", "o1-mini-2024-09-12", "openai/o1-mini"),
        ("openai", "o3-mini", "openai/o3-mini"),
        ("openai", "gpt-4.1-nano-2025-04-14", "openai/gpt-4.1-nano"),
        ("anthropic", "claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-3-5-sonnet-latest", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-3-5-sonnet-v2@20241022", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),
        ("anthropic", "claude-3-haiku-20240307", "anthropic/claude-3-haiku"),
        ("google", "gemini-1.5-pro-002", "google/gemini-1.5-pro"),
        ("google", "models/gemini-2.0-flash", "google/gemini-2.0-flash"),
        ("google", "gemini-2.5-pro-preview-05-06", "google/gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash", "google/gemini-2.5-flash"),
        ("mistral", "mistral-large-2411", "mistral/mistral-large"),
        ("mistral", "mistral-small-latest", "mistral/mistral-small"),
        ("mistralai", "codestral-2501", "mistral/codestral"),
        ("mistral", "open-mistral-nemo-2407", "mistral/open-mistral-nemo"),
    ],
)
def test_lookup_normalises_case_prefixes_and_snapshot_suffixes(
    provider: str, model: str, key: str
) -> None:
    assert get_price(provider, model) == shipped(key)


def test_exact_snapshot_entry_wins_over_suffix_stripping() -> None:
    # gpt-4o-2024-05-13 kept its launch price; stripping the date would give gpt-4o's.
    assert get_price("openai", "gpt-4o-2024-05-13") == Price(5.0, 15.0, 5.0)
    assert get_price("openai", "gpt-4o-2024-08-06") == Price(2.5, 10.0, 1.25)


def test_prefix_match_picks_the_longest_on_a_dash_boundary() -> None:
    table = PriceTable({"x/alpha": Price(1.0, 1.0), "x/alpha-beta": Price(2.0, 2.0)}, as_of=None)
    assert table.lookup("x", "alpha-beta-gamma") == Price(2.0, 2.0)
    assert table.lookup("x", "alpha-betagamma") == Price(1.0, 1.0)
    assert table.lookup("x", "alphabet") is None


def test_shipped_prefix_match_prefers_mini_over_its_namesake() -> None:
    assert get_price("openai", "gpt-4o-mini-search-preview") == shipped("openai/gpt-4o-mini")
    assert get_price("google", "gemini-2.5-flash-lite-preview-06-17") == shipped(
        "google/gemini-2.5-flash-lite"
    )


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-5-ultra"),
        ("openai", "gpt-4"),  # gpt-4o is not a prefix on a dash boundary
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),  # fine-tunes cost more
        ("anthropic", "gpt-4o"),  # no matching across providers
        ("anthropic", "openai/gpt-4o"),
        ("acme", "gpt-4o"),
        ("", "gpt-4o"),
        ("openai", ""),
    ],
)
def test_unknown_model_is_none_not_zero(provider: str, model: str) -> None:
    assert get_price(provider, model) is None


def test_lookup_memo_is_bounded_and_results_stay_correct() -> None:
    table = PriceTable({"x/m": Price(1.0, 2.0)})
    for i in range(3000):
        assert table.lookup("x", f"m-{i}") == Price(1.0, 2.0)
    assert len(table._memo) <= 1024
    assert table.lookup("x", "m-2999") == Price(1.0, 2.0)
    assert table.lookup("x", "n-1") is None


# --- load_prices -----------------------------------------------------------


def test_load_prices_from_dict_extends_and_overrides() -> None:
    as_of = price_table().as_of
    load_prices(
        {
            "openai/my-model": {"input": 1, "output": 2},
            "OpenAI/GPT-4o": {"input": 2.0, "cached_input": 0.5, "output": 8.0},
        }
    )
    assert get_price("openai", "my-model-2025-01-01") == Price(1.0, 2.0)
    # the override also reaches snapshots that strip to it
    assert get_price("openai", "gpt-4o-2024-08-06") == Price(2.0, 8.0, 0.5)
    assert get_price("anthropic", "claude-3-opus") == shipped("anthropic/claude-3-opus")
    assert price_table().as_of == as_of


def test_load_prices_replace_drops_shipped_entries() -> None:
    load_prices({"acme/m1": {"input": 1.0, "output": 1.0}}, replace=True)
    assert get_price("acme", "m1") == Price(1.0, 1.0)
    assert get_price("openai", "gpt-4o") is None
    assert price_table().as_of is None
    assert len(price_table()) == 1


def test_load_prices_from_json_file_in_shipped_format(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "as_of": "2030-01-02",
                "unit": "USD per 1M tokens",
                "source": "our contract",
                "models": {"acme/m1": {"input": 4.0, "cached_input": 1.0, "output": 8.0}},
            }
        ),
        encoding="utf-8",
    )
    load_prices(path)
    assert get_price("acme", "m1") == Price(4.0, 8.0, 1.0)
    assert get_price("openai", "gpt-4o") is not None
    assert price_table().as_of != "2030-01-02"

    load_prices(str(path), replace=True)
    assert get_price("openai", "gpt-4o") is None
    assert price_table().as_of == "2030-01-02"


def test_load_prices_from_json_file_with_bare_mapping(tmp_path: Path) -> None:
    path = tmp_path / "extra.json"
    path.write_text(json.dumps({"mistral/magistral-medium": {"input": 2, "output": 5}}))
    load_prices(path)
    assert get_price("mistral", "magistral-medium-2506") == Price(2.0, 5.0)
    assert get_price("mistral", "mistral-large") is not None


def test_concurrent_extensions_all_land() -> None:
    def extend(i: int) -> None:
        load_prices({f"acme/m{i}": {"input": float(i), "output": 1.0}})

    threads = [threading.Thread(target=extend, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(get_price("acme", f"m{i}") == Price(float(i), 1.0) for i in range(16))


BAD_MAPPINGS: list[Any] = [
    {"gpt-4o": {"input": 1.0, "output": 1.0}},
    {"openai/": {"input": 1.0, "output": 1.0}},
    {"/gpt-4o": {"input": 1.0, "output": 1.0}},
    {"openai/x": {"input": -1.0, "output": 1.0}},
    {"openai/x": {"input": "1.0", "output": 1.0}},
    {"openai/x": {"input": None, "output": 1.0}},
    {"openai/x": {"input": True, "output": 1.0}},
    {"openai/x": {"input": 1.0, "output": float("inf")}},
    {"openai/x": {"input": 1.0, "output": 1.0, "cached_input": -0.5}},
    {"openai/x": {"input": 1.0}},
    {"openai/x": {"input": 1.0, "output": 1.0, "cache_input": 0.5}},
    {"openai/x": 3.0},
    {"openai/x": {"input": 1.0, "output": 1.0}, "OpenAI/X": {"input": 2.0, "output": 2.0}},
    {"models": [{"openai/x": {"input": 1.0, "output": 1.0}}]},
    {"models": {"openai/x": {"input": 1.0, "output": 1.0}}, "unit": "USD per 1K tokens"},
    {"models": {"openai/x": {"input": 1.0, "output": 1.0}}, "as_of": "last week"},
    {"models": {"openai/x": {"input": 1.0, "output": 1.0}}, "as_of": 20250701},
    {"models": {}, "currency": "EUR"},
    {"models": {"gpt-4o": {"input": 1.0, "output": 1.0}}},
    ["openai/x"],
    42,
]


@pytest.mark.parametrize("source", BAD_MAPPINGS)
@pytest.mark.parametrize("replace", [False, True])
def test_bad_mapping_raises_and_leaves_table_unchanged(source: Any, replace: bool) -> None:
    before = price_table()
    with pytest.raises(ValueError):
        load_prices(source, replace=replace)
    assert price_table() is before


@pytest.mark.parametrize("source", BAD_MAPPINGS)
def test_bad_mapping_also_rejected_written_as_a_file(source: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(source), encoding="utf-8")
    before = price_table()
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_prices(path)
    assert price_table() is before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"openai/x": {"input": NaN, "output": 1}}', "finite"),
        (b"", "not valid JSON"),
    ],
)
def test_bad_file_content_raises_and_leaves_table_unchanged(
    content: bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    before = price_table()
    with pytest.raises(ValueError, match=message):
        load_prices(path)
    assert price_table() is before


def test_unreadable_file_raises_and_leaves_table_unchanged(tmp_path: Path) -> None:
    before = price_table()
    with pytest.raises(ValueError, match="cannot read"):
        load_prices(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="cannot read"):
        load_prices(tmp_path)  # a directory
    assert price_table() is before


def test_error_message_names_the_model_and_the_field() -> None:
    with pytest.raises(ValueError, match=r"'openai/x'.*'output'.*-2"):
        load_prices({"openai/x": {"input": 1.0, "output": -2}})


# --- the shipped table -----------------------------------------------------

REQUIRED = {
    "openai": [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-3.5-turbo",
    ],
    "anthropic": [
        "claude-3-5-sonnet",
        "claude-3-5-haiku",
        "claude-3-opus",
        "claude-3-haiku",
        "claude-sonnet-4",
        "claude-opus-4",
    ],
    "google": [
        "gemini-1.5-pro",
        "gemini-1.5-flash",
        "gemini-2.0-flash",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
    ],
    "mistral": ["mistral-large", "mistral-small", "codestral", "open-mistral-nemo"],
}


def shipped_document() -> dict[str, Any]:
    text = (files("instrument") / "data" / "prices.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def test_shipped_file_is_dated_and_every_entry_is_valid() -> None:
    document = shipped_document()
    assert document["unit"] == "USD per 1M tokens"
    assert date.fromisoformat(document["as_of"]) <= date.today()
    assert price_table().as_of == document["as_of"]
    models = document["models"]
    assert len(price_table()) == len(models)
    for key, entry in models.items():
        assert key == key.lower() and key.count("/") == 1, key
        # explicit everywhere, so a reader never has to guess whether a discount exists
        assert set(entry) - {"cache_write", "cache_write_1h"} == {"input", "cached_input",
                                                                "output"}, key
        # Anthropic's cache writes have their own (5-minute) rate: at most 1.25x input
        if key.startswith("anthropic/"):
            assert entry["input"] < entry["cache_write"] <= 1.25 * entry["input"], key
        price = Price(**entry)
        assert price.cached_rate <= price.input, key
        # embedding models produce no output tokens, so only their input has a price
        assert price.input > 0 and (price.output > 0 or "embedding" in key), key


def test_shipped_table_covers_the_four_providers_and_common_models() -> None:
    for provider, models in REQUIRED.items():
        for model in models:
            key = f"{provider}/{model}"
            assert key in price_table().prices, key
            assert get_price(provider, model) == shipped(key)


def test_price_table_is_loaded_once_and_shared() -> None:
    assert price_table() is price_table()


def test_reset_prices_restores_the_shipped_table() -> None:
    original = price_table()
    load_prices({"acme/m1": {"input": 1.0, "output": 1.0}}, replace=True)
    assert price_table() is not original
    reset_prices()
    assert price_table() is original
    assert get_price("acme", "m1") is None
    assert get_price("openai", "gpt-4o") == Price(2.5, 10.0, 1.25)


def test_genai_prices_looks_up_a_bounded_number_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model names come from callers: past the limit a new name costs no lookup, and neither
    our memory of names nor genai-prices' own lookup cache grows with a flood of them."""
    from types import SimpleNamespace

    from instrument import _genai

    asked: list[str] = []

    def calc_price(usage: object, model: str, provider_id: str) -> object:
        asked.append(model)
        if model.startswith("known"):
            return SimpleNamespace(total_price=0.5)
        raise LookupError(model)

    fake = SimpleNamespace(calc_price=calc_price, Usage=lambda **counts: counts)
    monkeypatch.setattr(_genai, "_module", fake)
    monkeypatch.setattr(_genai, "_NAME_LIMIT", 3)
    monkeypatch.setattr(_genai, "_rates", {})
    assert _genai.cost("openai", "known-1", 10, 2, 0, 0, 0) == 0.5
    assert _genai.cost("openai", "invented-1", 10, 2, 0, 0, 0) is None
    assert _genai.cost("openai", "invented-1", 10, 2, 0, 0, 0) is None  # a miss: asked once
    assert _genai.cost("openai", "invented-2", 10, 2, 0, 0, 0) is None
    for i in range(100):  # the limit is reached: nothing new is asked
        assert _genai.cost("openai", f"invented-{i + 3}", 10, 2, 0, 0, 0) is None
    assert _genai.cost("openai", "known-1", 10, 2, 0, 0, 0) == 0.5  # known names still priced
    assert set(asked) == {"known-1", "invented-1", "invented-2"}
    assert asked.count("invented-1") == 1  # a miss is remembered
    assert len(_genai._rates) == 3


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-sonnet-4"), ("google", "gemini-1.5-pro")])
def test_genai_prices_rates_give_what_its_own_calculation_gives(
        provider: str, model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-token rates worked out once per model price every call exactly as
    genai-prices' own ``calc_price`` would (a model priced in tiers is left to it)."""
    genai_prices = pytest.importorskip("genai_prices")
    from instrument import _genai

    monkeypatch.setattr(_genai, "_rates", {})
    usages = [(1000, 200, 0, 0, 0), (5000, 700, 3000, 0, 0), (9000, 50, 1000, 4000, 0),
              (9000, 50, 1000, 4000, 1500), (250_000, 1000, 0, 0, 0)]
    for tokens in usages:
        inputs, outputs, read, write, hour = tokens
        counts = {"input_tokens": inputs, "output_tokens": outputs, "cache_read_tokens": read,
                  "cache_write_tokens": write}
        if hour:
            counts |= {"cache_write_1h_tokens": hour, "cache_write_5m_tokens": write - hour}
        expected = float(genai_prices.calc_price(genai_prices.Usage(**counts), model,
                                                 provider_id=provider).total_price)
        assert _genai.cost(provider, model, *tokens) == pytest.approx(expected, rel=1e-9), tokens
    linear = _genai._rates[(provider, model)][1] is not _genai.TIERED
    assert linear == (model != "gemini-1.5-pro")  # tiered by context length: not linear
