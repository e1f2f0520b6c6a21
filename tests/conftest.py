"""Shared fixtures: a fresh registry and a clean loguru for every test, both async backends."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger
from prometheus_client import CollectorRegistry

import instrument
from instrument import _logging, _metrics, _pricing


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def registry() -> Iterator[CollectorRegistry]:
    """Each test records into its own registry, read back with ``get_sample_value``."""
    reg = CollectorRegistry()
    instrument.configure(registry=reg)
    yield reg
    _metrics.configured = None
    _metrics._reported.clear()


@pytest.fixture(autouse=True)
def _bundled_prices() -> Iterator[None]:
    """Tests price with the shipped table, whose figures they work out by hand: genai-prices
    (which the dev extra installs) is turned on by the tests that compare it; what a test
    loads with load_prices() goes after it."""
    _pricing.reset_prices()
    _pricing.use_genai_prices(False)
    yield
    _pricing.reset_prices()


@pytest.fixture(autouse=True)
def _clean_loguru() -> Iterator[None]:
    """No sink, no patcher, the toolkit's records disabled (as a fresh import leaves them), and
    the stdlib root logger as it was (configure_logging changes it)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logger.remove()
    yield
    logger.remove()
    logger.configure(patcher=None)
    logger.disable("instrument")  # as after import: silent until a test opts in
    _logging._sink_id = None
    _logging._sink = None
    root.handlers[:] = handlers
    root.setLevel(level)


class LogCapture:
    """A stream sink collecting the JSON lines written by ``configure_logging``."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> None:
        self.chunks.append(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every line parsed with ``json.loads`` (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.text.splitlines()]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == event]


@pytest.fixture
def logs() -> LogCapture:
    """JSON logging at DEBUG into memory."""
    capture = LogCapture()
    instrument.configure_logging("DEBUG", sink=capture)
    return capture


@pytest.fixture(autouse=True)
def _no_internal_errors(registry: CollectorRegistry, request: pytest.FixtureRequest
                        ) -> Iterator[None]:
    """In modules marked ``no_internal_errors``, a swallowed bookkeeping error fails the test
    (unless it asks for ``expect_internal_errors``): swallowing must not hide bugs."""
    yield
    if (request.node.get_closest_marker("no_internal_errors") is not None
            and "expect_internal_errors" not in request.fixturenames):
        assert not [s for m in registry.collect() if m.name == "instrument_internal_errors"
                    for s in m.samples if s.name.endswith("_total")]


@pytest.fixture
def expect_internal_errors() -> None:
    """Marks a test that provokes an internal error on purpose."""

