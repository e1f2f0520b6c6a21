"""Where a call's price comes from: ``load_prices`` entries, then ``genai-prices`` (installed by
the dev extra), then the shipped table; the log line's ``price_source`` says which.

The same real SDK calls against the fake provider are priced by both sources. By hand:
gpt-4o-mini, 1200 prompt tokens (1000 cached), 80 output (30 reasoning, a part of it):
(200 * 0.15 + 1000 * 0.075 + 80 * 0.6) / 1e6 = 0.000153. claude-3-5-haiku, 1200 uncached
input, 1000 cache reads, 500 cache writes of which 200 are 1-hour, 80 output:
(1200 * 0.8 + 1000 * 0.08 + 300 * 1.0 + 200 * 1.6 + 80 * 4.0) / 1e6 = 0.00198.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from instrument import _genai, _pricing, load_prices, record_usage, track_provider
from instrument.adapters.anthropic import instrument_anthropic
from instrument.adapters.openai import instrument_openai
from tests.adapters.sdk_helpers import cost, fake, only, unpriced
from tests.conftest import LogCapture
from tests.fakes.llm_server import FakeLLM

__all__ = ["fake"]  # the fixture, imported for pytest

pytestmark = pytest.mark.no_internal_errors

genai_installed = pytest.mark.skipif(not _genai.available(),
                                     reason="genai-prices is not installed (Python 3.11+)")
MESSAGES = [{"role": "user", "content": "hi"}]
MINI, HAIKU = "gpt-4o-mini", "claude-3-5-haiku-latest"


@pytest.fixture
def clients(fake: FakeLLM) -> Iterator[tuple[openai.OpenAI, anthropic.Anthropic]]:
    fake.usage.reasoning = 30
    fake.usage.cache_write = 500
    with openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0) as gpt, \
            anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0) as claude:
        yield instrument_openai(gpt), instrument_anthropic(claude)


def priced(clients: tuple[openai.OpenAI, anthropic.Anthropic], logs: LogCapture
           ) -> list[tuple[float, str]]:
    """One OpenAI and one Anthropic call: each one's (cost_usd, price_source) from its log."""
    gpt, claude = clients
    gpt.chat.completions.create(model=MINI, messages=MESSAGES)
    claude.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
    return [(e["cost_usd"], e["price_source"]) for e in logs.events("provider_call")]


@genai_installed
def test_both_sources_price_the_same_calls_alike(
        clients: Any, fake: FakeLLM, registry: CollectorRegistry, logs: LogCapture) -> None:
    fake.usage.cache_write_1h = 200
    bundled = priced(clients, logs)
    logs.chunks.clear()
    assert _pricing.use_genai_prices(True) is True
    by_genai = priced(clients, logs)
    assert bundled == [(pytest.approx(0.000153), "bundled"), (pytest.approx(0.00198), "bundled")]
    assert by_genai == [(pytest.approx(0.000153), "genai-prices"),
                        (pytest.approx(0.00198), "genai-prices")]
    assert cost(registry, "openai", MINI) == pytest.approx(2 * 0.000153)
    assert cost(registry, "anthropic", HAIKU) == pytest.approx(2 * 0.00198)


def test_one_hour_cache_writes_cost_more_than_five_minute_ones(
        clients: Any, fake: FakeLLM, logs: LogCapture) -> None:
    _, claude = clients
    claude.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
    fake.usage.cache_write_1h = 500
    claude.messages.create(model=HAIKU, max_tokens=64, messages=MESSAGES)
    five, hour = logs.events("provider_call")
    # all 500 writes at 1.0, then at 1.6: 500 * 0.6 / 1e6 apart
    assert five["cost_usd"] == pytest.approx(0.00186)
    assert hour["cost_usd"] == pytest.approx(0.00186 + 0.0003)
    assert five["cache_write_tokens"] == hour["cache_write_tokens"] == 500


@genai_installed
def test_a_model_only_genai_prices_knows(registry: CollectorRegistry, logs: LogCapture) -> None:
    @track_provider("deepseek", "deepseek-chat")
    def ask() -> None:
        record_usage(input_tokens=1000, output_tokens=100)

    ask()
    assert unpriced(registry, "deepseek", "deepseek-chat") == {"no_price": 1}
    _pricing.use_genai_prices(True)
    ask()
    first, second = logs.events("provider_call")
    assert (first["cost_usd"], first["price_source"]) == (None, None)
    assert second["price_source"] == "genai-prices" and second["cost_usd"] > 0


@genai_installed
def test_loaded_prices_override_genai_prices_and_replace_leaves_only_them(
        clients: Any, logs: LogCapture) -> None:
    _pricing.use_genai_prices(True)
    load_prices({"openai/gpt-4o-mini": {"input": 1.0, "cached_input": 0.5, "output": 2.0}})
    # (200 * 1.0 + 1000 * 0.5 + 80 * 2.0) / 1e6
    assert priced(clients, logs) == [(pytest.approx(0.00086), "load_prices"),
                                     (pytest.approx(0.00186), "genai-prices")]
    logs.chunks.clear()
    load_prices({"openai/gpt-4o-mini": {"input": 1.0, "cached_input": 0.5, "output": 2.0}},
                replace=True)
    assert priced(clients, logs) == [(pytest.approx(0.00086), "load_prices"), (None, None)]


def test_without_genai_prices_the_bundled_table_prices(
        clients: Any, logs: LogCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_genai, "_module", False)  # as when it is not installed
    assert _pricing.use_genai_prices(True) is False
    assert [s for _, s in priced(clients, logs)] == ["bundled", "bundled"]


def test_a_cost_given_by_the_caller_says_so(logs: LogCapture) -> None:
    @track_provider("openai", MINI)
    def ask() -> None:
        record_usage(input_tokens=10, output_tokens=1, cost_usd=0.5)

    ask()
    event = only(logs.events("provider_call"))
    assert (event["cost_usd"], event["price_source"]) == (0.5, "record_usage")


def test_importing_the_toolkit_never_imports_genai_prices() -> None:
    code = ("import sys, instrument, instrument.adapters.openai; "
            "print('genai_prices' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
