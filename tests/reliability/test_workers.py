"""gunicorn with 4 sync workers in prometheus-client's multiprocess mode: every request
counted exactly once whichever worker served it, a worker killed with SIGKILL mid-run loses
nothing it had counted and leaves no live gauge behind, and the exemplars notice is said
once per worker, at start-up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from instrument._catalog import CATALOG
from tests.adapters.test_gunicorn import _kill_group
from tests.helpers import Scrape, free_port, scrape, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
REQUESTS = 2000
#: the requests sent before the kill; the rest are sent while it happens
BEFORE_KILL = 1000
CONCURRENCY = 20
ROUTE = "/hit/<int:i>"
LIVE = ("http_requests_in_progress", "sse_active_connections", "provider_inflight_requests")
#: how each gauge adds up across workers: the live ones over live workers only
MODES = {"http_requests_in_progress": "livesum", "sse_active_connections": "livesum",
         "provider_inflight_requests": "livesum",
         "provider_ratelimit_remaining": "mostrecent", "provider_ratelimit_limit": "mostrecent",
         "system_uptime_seconds": "max"}


@dataclass
class Gunicorn:
    url: str
    master: subprocess.Popen[bytes]
    multiproc: Path
    logs: Path

    def workers(self) -> set[int]:
        """The master's children now."""
        children = Path(f"/proc/{self.master.pid}/task/{self.master.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def live_gauge_pids(self) -> set[int]:
        return {int(p.stem.rsplit("_", 1)[1]) for p in self.multiproc.glob("gauge_live*.db")}


@contextmanager
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    """gunicorn, 4 sync workers, in its own process group (killed on the way out, pass or
    fail), with the toolkit's child_exit hook."""
    (tmp_path / "gunicorn.conf.py").write_text(
        "from instrument.adapters.flask import gunicorn_child_exit as child_exit\n")
    multiproc, logs = tmp_path / "multiproc", tmp_path / "logs"
    multiproc.mkdir()
    logs.mkdir()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "RELIABILITY_LOG_DIR": str(logs), "RELIABILITY_RELEASE": str(tmp_path / "release")}
    with (tmp_path / "gunicorn.out").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--worker-class",
             "sync", "--graceful-timeout", "2", "--no-control-socket",
             "tests.reliability.workers_app:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Gunicorn(f"http://127.0.0.1:{port}", proc, multiproc, logs)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "gunicorn.out").read_text()
            try:
                healthy = httpx.get(server.url + "/metrics/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
            return healthy and len(server.workers()) == WORKERS

        wait_until(ready, timeout=30, interval=0.1)
        yield server
    finally:
        (tmp_path / "release").touch()
        _kill_group(proc)


@dataclass
class Run:
    served_by: Counter[int] = field(default_factory=Counter)  # responses got, per worker
    failed: list[str] = field(default_factory=list)
    victim: int | None = None
    hold_cut: bool = False
    #: the live gauges while the stream is held, before the kill
    held: dict[str, float | None] = field(default_factory=dict)


async def run(url: str, server: Gunicorn) -> Run:
    """1,000 requests; a stream held open on one worker; 1,000 more, that worker SIGKILLed
    once half of them are answered."""
    result = Run()
    gate = asyncio.Semaphore(CONCURRENCY)
    answered = 0
    half = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal answered
            async with gate:
                try:
                    response = await client.get(f"/hit/{i}", headers={"X-Trace-ID": f"w-{i}"})
                except httpx.TransportError as exc:
                    result.failed.append(f"{i}: {exc!r}")
                    return
            if response.status_code != 200:
                result.failed.append(f"{i}: {response.status_code}")
                return
            result.served_by[int(response.text)] += 1
            answered += 1
            if answered == BEFORE_KILL + (REQUESTS - BEFORE_KILL) // 2:
                half.set()

        await asyncio.gather(*(one(i) for i in range(BEFORE_KILL)))

        async with httpx.AsyncClient(base_url=url, timeout=30) as holder, holder.stream(
                "GET", "/hold") as stream:
            lines = stream.aiter_lines()
            while not (line := await anext(lines)).startswith("data: "):
                pass
            result.victim = int(line.removeprefix("data: "))
            assert result.victim in server.workers()
            page = Scrape((await client.get("/metrics")).text)
            result.held = {name: page.value(name) for name in LIVE}

            async def kill() -> None:
                await half.wait()
                os.kill(result.victim or 0, signal.SIGKILL)

            await asyncio.gather(kill(), *(one(i) for i in range(BEFORE_KILL, REQUESTS)))
            try:
                async for _ in lines:
                    pass
            except httpx.TransportError:
                result.hold_cut = True
    return result


def summary_requests(doc: Any, route: str) -> int | None:
    """The ``requests`` of ``route`` wherever the summary lists it."""
    if isinstance(doc, dict):
        if doc.get("route") == route and "requests" in doc:
            return int(doc["requests"])
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            if (found := summary_requests(item, route)) is not None:
                return found
    return None


def test_four_workers_count_every_request_and_a_killed_worker_loses_none(tmp_path: Path
                                                                        ) -> None:
    with gunicorn(tmp_path) as server:
        first = server.workers()
        result = asyncio.run(run(server.url, server))
        assert result.victim is not None
        # gunicorn replaced the worker; the hook dropped its live gauges
        wait_until(lambda: len(server.workers()) == WORKERS and result.victim
                   not in server.workers(), timeout=30)
        wait_until(lambda: result.victim not in server.live_gauge_pids(), timeout=30)
        got = sum(result.served_by.values())
        try:  # the last responses may be out a moment before their worker counts them
            wait_until(lambda: scrape(server.url + "/metrics").value(
                "http_requests_total", route=ROUTE) == got, timeout=30)
        except AssertionError:
            pass  # the exact checks below say by how much
        page = scrape(server.url + "/metrics")
        summary = httpx.get(server.url + "/metrics/summary", timeout=10).json()
        openmetrics = httpx.get(server.url + "/metrics", timeout=10, headers={
            "Accept": "application/openmetrics-text; version=1.0.0"}).text
        now = server.workers()
        replacement = now - first
        live_files = server.live_gauge_pids()
        kinds = {p.name.split("_")[1] for p in server.multiproc.glob("gauge_*.db")}

    # every request answered, every answer counted once, the dead worker's included
    assert result.failed == []
    assert got == REQUESTS
    assert result.served_by[result.victim] > 0  # it had counted some before it died
    assert set(result.served_by) <= first | replacement  # the replacement served some too
    assert set(result.served_by) >= first
    assert result.hold_cut
    assert page.value("http_requests_total", route=ROUTE, status="200") == REQUESTS
    assert page.value("http_request_duration_seconds_count", route=ROUTE) == REQUESTS
    assert summary_requests(summary, ROUTE) == REQUESTS
    assert page.value("provider_requests_total", status="ok") == REQUESTS
    assert page.value("trace_requests_total") == REQUESTS
    # the held stream's request never ended: counted as opened, never as closed or served
    assert page.value("sse_connections_total", endpoint="/hold") == 1
    assert page.value("sse_streams_closed_total") is None
    assert page.value("http_requests_total", route="/hold") is None
    # ... and the live gauges it held up went with it (a series only it had is gone)
    assert result.held == dict.fromkeys(LIVE, 1)
    assert {name: page.value(name) or 0 for name in LIVE} == dict.fromkeys(LIVE, 0)
    assert page.value("instrument_internal_errors_total") is None
    check_gauge_modes(page, now, live_files, kinds, replacement)
    assert "trace_id" not in openmetrics  # no exemplar in this mode
    check_notice_once(server.logs, first | replacement)


def check_gauge_modes(page: Scrape, workers: set[int], live_files: set[int], kinds: set[str],
                      replacement: set[int]) -> None:
    """Each gauge adds up as ``MODES`` says: live gauges in one livesum file per live worker
    (the dead one's removed, the replacement's there), none with a per-worker ``pid`` label
    on the merged page."""
    assert {s.name: s.multiprocess_mode for s in CATALOG if s.kind == "gauge"} == MODES
    assert live_files == workers
    assert kinds <= {"livesum", "mostrecent", "max"}
    assert len(replacement) == 1
    for name in MODES:
        assert all("pid" not in labels for labels in page.labels_of(name)), name


def check_notice_once(logs: Path, workers: set[int]) -> None:
    """Each worker said once, as it started, that exemplars are off; nothing said it twice."""
    for pid in workers:
        records = [json.loads(line) for line in
                   (logs / f"worker-{pid}.log").read_text().splitlines()]
        notices = [r for r in records if "exemplars are unavailable" in r["message"]]
        assert len(notices) == 1, (pid, notices)
        assert records[0] is notices[0]
    assert {int(p.stem.removeprefix("worker-")) for p in logs.glob("worker-*.log")} == workers
