"""examples/gunicorn_multiprocess: two gunicorn workers, one /metrics that adds both up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.examples import PYTHON, running
from tests.helpers import free_port, scrape

pytestmark = pytest.mark.slow

N = 24


def test_metrics_add_up_requests_served_by_every_worker(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    env = {"PORT": str(port), "WEB_CONCURRENCY": "2", "PYTHON": PYTHON,
           "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    with running(["sh", "examples/gunicorn_multiprocess/run.sh"], tmp_path, env) as example:
        example.wait_http(base + "/metrics/health")

        def ask(i: int) -> int:
            # a connection each: the sync workers take turns accepting them
            response = httpx.get(f"{base}/ask", params={"q": str(i)}, timeout=10)
            assert response.status_code == 200
            return int(response.json()["worker_pid"])

        with ThreadPoolExecutor(max_workers=6) as pool:
            pids = set(pool.map(ask, range(N)))
        assert len(pids) == 2, "both workers should have served requests"

        page = scrape(base + "/metrics")
        assert page.value("http_requests_total", method="GET", route="/ask", status="200") == N
        assert page.value("provider_requests_total", provider="local", status="ok") == N
        assert page.value("http_requests_in_progress", route="/ask") == 0
        assert any(multiproc.iterdir()), "each worker writes its metrics here"
