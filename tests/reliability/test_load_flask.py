"""Flask on werkzeug's threaded server and on gunicorn with gthread workers: 1,000 requests,
100 at a time, each handler calling the fake upstream through the instrumented httpx client:
nothing crosses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import instrument
from instrument.adapters.httpx import instrument_client
from tests.adapters.apps.flask_app import serving
from tests.adapters.test_gunicorn import _kill_group
from tests.conftest import LogCapture
from tests.helpers import Scrape, free_port, scrape, wait_until
from tests.reliability.common import (
    REQUESTS,
    check_metrics,
    check_nothing_crossed,
    fake_upstream,
    fire,
)
from tests.reliability.flask_work import create_app

pytestmark = [pytest.mark.slow, pytest.mark.no_internal_errors, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
# per request: the handler's line, the httpx client's, the toolkit's access line, the server's
PER_REQUEST = 4


def test_flask_on_werkzeug_keeps_every_trace_apart() -> None:
    logs = LogCapture()
    instrument.configure_logging("INFO", sink=logs)
    with fake_upstream() as fake, instrument_client(httpx.Client(
            timeout=30, limits=httpx.Limits(max_connections=100))) as http:
        with serving(create_app(fake.url, http)) as url:
            report = fire(url, "werkzeug")
            wait_until(lambda: len(logs.events("request")) == REQUESTS, timeout=30)
            wait_until(lambda: sum('"logger":"werkzeug"' in line and "/work/" in line
                                   for line in logs.text.splitlines()) == REQUESTS, timeout=30)
            metrics = scrape(url + "/metrics")
    check_nothing_crossed(report, logs.text.splitlines(), fake, url, "werkzeug", PER_REQUEST,
                          calls_per_request=1)
    check_metrics(metrics, "/work/<tag>")


@contextmanager
def gunicorn(tmp_path: Path, upstream: str, log: Path) -> Iterator[str]:
    """gunicorn, one gthread worker with 16 threads, in its own process group (killed on the
    way out, pass or fail), its access log routed into the toolkit's JSON log."""
    (tmp_path / "gunicorn.conf.py").write_text(
        "from instrument.adapters.flask import gunicorn_child_exit as child_exit\n")
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "RELIABILITY_UPSTREAM": upstream, "RELIABILITY_LOG": str(log)}
    with (tmp_path / "gunicorn.out").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread",
             "--threads", "16", "--keep-alive", "60", "--access-logfile", "/dev/null",
             "--no-control-socket",
             "tests.reliability.flask_work:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "gunicorn.out").read_text()
            try:
                return httpx.get(url + "/metrics/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=30, interval=0.1)
        yield url
    finally:
        _kill_group(proc)


def test_flask_on_gunicorn_threads_keeps_every_trace_apart(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with fake_upstream() as fake, gunicorn(tmp_path, fake.url, log) as url:
        report = fire(url, "gunicorn")

        def lines() -> list[str]:
            return log.read_text().splitlines()

        wait_until(lambda: sum('"event":"request"' in line for line in lines()) == REQUESTS,
                   timeout=30)
        wait_until(lambda: sum('"logger":"gunicorn.access"' in line and "/work/" in line
                               for line in lines()) == REQUESTS, timeout=30)
        metrics: Scrape = scrape(url + "/metrics")
    check_nothing_crossed(report, lines(), fake, url, "gunicorn", PER_REQUEST, calls_per_request=1)
    check_metrics(metrics, "/work/<tag>")
