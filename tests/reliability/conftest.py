"""The reliability run's own fixtures: hypothesis profiles, and one collection of every
line the run emits, searched for planted secrets by the test that runs last.

What is collected, per test (``planted.COLLECTED``, keyed by the test's node ID):

- every text any ``configure_logging`` sink is handed (both modes: written in the logging
  call or by the queue's writer thread), teed where the sink writes;
- what pytest captured of the test's stdout and stderr, its subprocesses' included (the
  toolkit's one-line reports of internal errors go to stderr, and loguru's own error
  dumps); a test that reads its output with ``capsys`` adds it itself;
- every ``/metrics`` page a test parses (``tests.helpers.Scrape``);
- at the end of each test, its registry as ``/metrics`` and ``/metrics/summary`` would
  show it.

Files the test processes write (gunicorn's worker logs, its output, the multiprocess
files) are under pytest's base temporary directory: the last test searches them too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry, generate_latest

from instrument import _logging
from instrument._summary import summarize
from tests import helpers
from tests.reliability.planted import COLLECTED

# -- hypothesis ------------------------------------------------------------------------------

_COMMON: dict[str, Any] = {"deadline": None, "derandomize": False,
                           "suppress_health_check": [HealthCheck.too_slow,
                                                     HealthCheck.function_scoped_fixture]}
# make test: a quick pass over every property
settings.register_profile("quick", max_examples=150, **_COMMON)
# HYPOTHESIS_PROFILE=slow: at least 10,000 examples per property
settings.register_profile("slow", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

# -- the collection --------------------------------------------------------------------------

LAST = "test_zz_no_planted_secret_in_the_whole_run"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """Each phase's captured output joins the collection (under the test that wrote it)."""
    report: Any = yield
    if item.nodeid.startswith("tests/reliability/"):
        for _title, text in report.sections:
            COLLECTED.add(text, item.nodeid)
    return report  # type: ignore[no-any-return]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The search of the whole run's lines runs after every other test."""
    last = [item for item in items if item.name == LAST]
    items[:] = [item for item in items if item.name != LAST] + last


@pytest.fixture(autouse=True)
def _collect_everything(request: pytest.FixtureRequest, registry: CollectorRegistry,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tee every sink, stderr and every parsed scrape of this test into ``COLLECTED``; add the
    test's registry (exposition and summary) when it ends."""
    where = request.node.nodeid
    COLLECTED.current = where
    COLLECTED.add("", where)  # the test ran, even if it emitted nothing
    sink_init = _logging._Sink.__init__

    def teed_init(self: Any, out: Any, queue_size: int, json: bool) -> None:
        sink_init(self, out, queue_size, json)
        write = self._write

        def tee(text: str) -> Any:
            COLLECTED.add(text, where)
            return write(text)

        self._write = tee

    scrape_init = helpers.Scrape.__init__

    def teed_scrape(self: Any, text: str) -> None:
        COLLECTED.add(text, where)
        scrape_init(self, text)

    monkeypatch.setattr(_logging._Sink, "__init__", teed_init)
    monkeypatch.setattr(helpers.Scrape, "__init__", teed_scrape)
    yield
    try:
        COLLECTED.add(generate_latest(registry).decode(), where)
        COLLECTED.add(json.dumps(summarize(registry.collect())), where)
    except Exception as exc:  # a test that broke its registry on purpose
        COLLECTED.add(f"(registry not readable: {type(exc).__name__})", where)
