"""The Flask adapter under gunicorn, sync and gthread workers, metrics summed across workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, scrape, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

APP_MODULE = '''
import os

from flask import send_file

from instrument.adapters.flask import instrument_app
from tests.adapters.apps.flask_app import create_app

app = create_app()


@app.get("/pid")
def pid():
    return str(os.getpid())


@app.get("/file")
def file():
    return send_file(__file__, mimetype="text/plain")  # gunicorn's wsgi.file_wrapper


instrument_app(app, access_log=False)
'''

CONFIG = '''
from instrument.adapters.flask import gunicorn_child_exit as child_exit
'''


class Gunicorn:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, multiproc_dir: Path,
                 log: Path) -> None:
        self.proc = proc
        self.url = url
        self.multiproc_dir = multiproc_dir
        self.log = log

    def live_gauge_pids(self) -> set[int]:
        """Workers whose live gauges are still on disk (removed by the child_exit hook)."""
        return {int(p.stem.rsplit("_", 1)[1]) for p in self.multiproc_dir.glob("gauge_live*.db")}

    def total(self, name: str, **labels: str) -> float:
        return scrape(self.url + "/metrics").value(name, **labels) or 0.0


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Start gunicorn in its own process group; always kill the whole group afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*worker_args: str) -> Gunicorn:
        (tmp_path / "gunicorn_flask_app.py").write_text(APP_MODULE)
        (tmp_path / "gunicorn.conf.py").write_text(CONFIG)
        multiproc_dir = tmp_path / "multiproc"
        multiproc_dir.mkdir()
        log = tmp_path / "gunicorn.log"
        port = free_port()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"),
                 "--bind", f"127.0.0.1:{port}", "--pythonpath", f"{tmp_path},{ROOT}",
                 "--no-control-socket", *worker_args, "gunicorn_flask_app:app"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        started.append(proc)
        server = Gunicorn(proc, f"http://127.0.0.1:{port}", multiproc_dir, log)

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(server.url + "/metrics/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=30, interval=0.1)
        return server

    try:
        yield start
    finally:
        for proc in started:
            _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    pgid = proc.pid  # start_new_session: the master leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL if time.monotonic() > deadline - 5 else 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"processes of group {pgid} survived")
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_sync_workers_aggregate_and_the_child_exit_hook_drops_dead_gauges(
        start_gunicorn: Callable[..., Gunicorn]) -> None:
    server = start_gunicorn("--workers", "2", "--worker-class", "sync")
    pids: set[str] = set()
    sent = 0
    while len(pids) < 2 or sent < 20:  # until both workers served some (new connection each)
        assert sent < 500, f"one worker served everything: {pids}"
        response = httpx.get(server.url + "/pid", headers={"X-Trace-ID": f"sync-{sent}"})
        assert response.headers["x-trace-id"] == f"sync-{sent}"
        pids.add(response.text)
        sent += 1
    wait_until(lambda: server.total("http_requests_total", route="/pid") == sent, timeout=10)
    assert server.total("http_requests_in_progress") == 0
    assert server.live_gauge_pids() == {int(p) for p in pids}

    os.kill(server.proc.pid, signal.SIGTTOU)  # one worker fewer: gunicorn stops the oldest
    wait_until(lambda: len(server.live_gauge_pids()) == 1, timeout=15)
    assert server.total("http_requests_total", route="/pid") == sent  # the dead worker still counts


def test_gthread_worker_keeps_each_concurrent_requests_trace(
        start_gunicorn: Callable[..., Gunicorn]) -> None:
    server = start_gunicorn("--workers", "1", "--worker-class", "gthread", "--threads", "4")
    n = 60

    def get(i: int) -> tuple[int, httpx.Response]:
        return i, httpx.get(f"{server.url}/items/{i}", headers={"X-Trace-ID": f"gthread-{i}"},
                            timeout=10)

    with ThreadPoolExecutor(8) as pool:
        for i, response in pool.map(get, range(n)):
            assert response.json() == {"item_id": str(i), "trace_id": f"gthread-{i}"}
            assert response.headers["x-trace-id"] == f"gthread-{i}"
    fresh = httpx.get(server.url + "/trace")  # no ID sent: a new trace, not a thread's last one
    assert fresh.text == fresh.headers["x-trace-id"]
    assert not fresh.text.startswith("gthread-")

    sse = httpx.get(server.url + "/sse")
    assert sse.text.count("data: ") == 5
    assert "instrument_app" in httpx.get(server.url + "/file").text

    wait_until(lambda: server.total("http_requests_total") == n + 3, timeout=10)
    assert server.total("http_requests_total", route="/items/<item_id>", status="200") == n
    assert server.total("http_requests_total", route="/file", status="200") == 1
    assert server.total("sse_streams_closed_total", outcome="completed") == 1
    assert server.total("http_requests_in_progress") == 0
    assert server.total("sse_active_connections") == 0
