"""examples/decorate_llm_call.py: serves provider metrics for both decorated calls, then exits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples import PYTHON, running
from tests.helpers import free_port, scrape, wait_until

pytestmark = pytest.mark.slow


def test_both_models_are_counted_and_the_script_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with running([PYTHON, "examples/decorate_llm_call.py"], tmp_path,
                 {"PORT": str(port), "DEMO_SECONDS": "3"}) as example:
        example.wait_http(url + "/health")
        page = wait_until(lambda: (p := scrape(url)).value(
            "provider_requests_total", model="gpt-4o", status="ok") and p)
        assert page.value("provider_requests_total", provider="openai", model="gpt-4o-mini")
        assert page.value("provider_tokens_total", model="gpt-4o", type="cached_input") == (
            32 * page.value("provider_requests_total", model="gpt-4o"))
        assert f"localhost:{port}/metrics" in example.stdout
        assert example.proc.wait(timeout=20) == 0
