"""What the SDK adapters' tests share: the fake provider per test, and reading a call back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.fakes.llm_server import FakeLLM, serve_fake_llm
from tests.helpers import value

STATUSES = ("ok", "error", "cancelled")
REASONS = ("no_price", "no_usage", "cancelled", "error")
TYPES = ("input", "output", "cached_input", "cache_write", "reasoning")


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with serve_fake_llm() as server:
        yield server


def calls(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    """Requests by status, only the statuses seen."""
    found = {s: value(registry, "provider_requests_total", provider=provider, model=model,
                      status=s) for s in STATUSES}
    return {s: n for s, n in found.items() if n}


def tokens(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    found = {t: value(registry, "provider_tokens_total", provider=provider, model=model, type=t)
             for t in TYPES}
    return {t: n for t, n in found.items() if n}


def unpriced(registry: CollectorRegistry, provider: str, model: str) -> dict[str, float]:
    found = {r: value(registry, "provider_unpriced_requests_total", provider=provider,
                      model=model, reason=r) for r in REASONS}
    return {r: n for r, n in found.items() if n}


def cost(registry: CollectorRegistry, provider: str, model: str) -> float:
    return value(registry, "token_cost_usd_total", provider=provider, model=model)


def errors(registry: CollectorRegistry, provider: str, model: str, error_type: str) -> float:
    return value(registry, "provider_errors_total", provider=provider, model=model,
                 error_type=error_type)


def ttft_count(registry: CollectorRegistry, provider: str, model: str) -> float:
    return value(registry, "provider_time_to_first_token_seconds_count", provider=provider,
                 model=model)


def inflight(registry: CollectorRegistry, provider: str) -> float:
    return value(registry, "provider_inflight_requests", provider=provider)


def all_provider_calls(registry: CollectorRegistry) -> float:
    """Every provider call recorded, whatever its labels."""
    return sum(s.value for m in registry.collect() if m.name == "provider_requests"
               for s in m.samples if s.name == "provider_requests_total")


def only(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0]
