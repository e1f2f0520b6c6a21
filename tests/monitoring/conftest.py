"""Fixtures for the monitoring tests: the Prometheus binaries and a live Prometheus on fake data.

This folder goes on ``sys.path`` so that tests import the helpers as ``import prom``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import prom  # noqa: E402  (needs the path above)
from catalog_app import CatalogApp  # noqa: E402


def _binary(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        message = f"{path} is missing: `make prometheus` installs Debian's prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run these tests, not skip them
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary(prom.PROMTOOL_BIN)


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary(prom.PROMETHEUS_BIN)


@dataclass
class Live:
    app: CatalogApp
    prom: prom.PromHandle


@pytest.fixture(scope="session")
def live(prometheus_bin: str) -> Iterator[Live]:
    """Prometheus with every rule file loaded, scraping a :class:`CatalogApp` every second."""
    with CatalogApp() as app, prom.run_prometheus(
            [app.target], list(prom.RULE_FILES), scrape_interval="1s") as handle:
        handle.wait_for_scrapes(3, timeout=30)
        yield Live(app, handle)
