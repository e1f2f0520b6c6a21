"""examples/gateway/demo.py: one command runs the gateway demo to the end, every figure non-zero.

The demo runs as a subprocess for 20 s (with Prometheus when it is on the PATH);
its printed final summary, the JSON it writes and its log file are checked, and
no process it started may outlive it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.examples import PYTHON, running

pytestmark = pytest.mark.slow

SECONDS = 20


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment carries ``marker``: everything the demo started inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # gone already, or not ours
    return found


def _final_block(stdout: str) -> str:
    assert "── final" in stdout, stdout
    return stdout.split("── final", 1)[1]


def _check_printed(block: str, summary: dict[str, Any]) -> None:
    total = re.search(r"^requests +(\d+) +error rate ([\d.]+)%", block, re.MULTILINE)
    assert total and int(total.group(1)) == summary["requests"]["total"] > 0
    for p in summary["providers"]:
        line = re.search(rf"^  {re.escape(p['provider'] + '/' + p['model'])} +(\d+) +([\d.]+)% +"
                         r"(\S+) +(\S+) +(\S+) +(\S+) +(\d+) +(\d+) +(\d+) +\$([\d.]+)$",
                         block, re.MULTILINE)
        assert line, f"no line for {p['provider']} in:\n{block}"
        calls, errors, *latencies, tokens_in, cached, tokens_out, cost = line.groups()
        assert int(calls) == p["requests"]
        # printed with one decimal: half a unit of display, plus float rounding at the boundary
        assert float(errors) == pytest.approx(100 * p["error_rate"], abs=0.0501)
        assert all(re.fullmatch(r"[\d.]+m?s", value) for value in latencies), latencies
        assert (int(tokens_in), int(cached), int(tokens_out)) == (
            p["tokens"]["input"], p["tokens"]["cached_input"], p["tokens"]["output"])
        assert float(cost) == pytest.approx(p["cost_usd"], abs=1e-4)
    ratio = re.search(r"^cache +answers +hits +(\d+) +misses +(\d+) +hit ratio ([\d.]+)%",
                      block, re.MULTILINE)
    assert ratio and float(ratio.group(3)) > 0
    outcomes = re.search(r"^ +outcomes +(.*)$", block, re.MULTILINE)
    assert outcomes
    printed = dict(re.findall(r"(\w+) (\d+)", outcomes.group(1)))
    assert {k: int(v) for k, v in printed.items()} == summary["sse"][0]["outcomes"]


def _check_summary(summary: dict[str, Any]) -> None:
    assert summary["requests"]["total"] > 0
    assert summary["internal_errors"] == 0
    providers = {p["provider"]: p for p in summary["providers"]}
    assert set(providers) == {"primary", "backup"}
    assert providers["primary"]["error_rate"] > 0  # the fake LLM fails on purpose
    for p in providers.values():
        assert p["requests"] > 0
        assert p["p50_ms"] > 0 and p["p95_ms"] >= p["p50_ms"]
        assert p["ttft_p50_ms"] > 0 and p["ttft_p95_ms"] >= p["ttft_p50_ms"]
        assert min(p["tokens"][t] for t in ("input", "output", "cached_input")) > 0
        assert p["cost_usd"] > 0
        # every model is priced and reports usage: only streams the gateway gave up on
        # (a client gone, a fallback) and calls failing half-way are of unknown cost
        assert set(p["unpriced_by_reason"]) <= {"cancelled", "error"}
    assert summary["cost_usd"]["tokens"] > 0
    # the SDK retries by itself (max_retries=1), then the gateway falls back to the backup
    assert providers["primary"]["retries"] > 0
    assert [(f["provider"], f["to_provider"]) for f in summary["fallbacks"]] == [
        ("primary", "backup")]
    assert summary["fallbacks"][0]["calls"] > 0
    assert providers["primary"]["ratelimit"] == {}  # the demo's fake sends no such headers
    (cache,) = summary["caches"]
    assert cache["cache"] == "answers" and cache["hits"] > 0 and cache["hit_ratio"] > 0
    (sse,) = summary["sse"]
    assert sse["endpoint"] == "/search" and sse["active"] == 0
    assert sse["events"] > 0 and sse["heartbeats"] > 0
    assert sse["outcomes"]["completed"] > 0 and sse["outcomes"]["client_disconnect"] > 0
    routes = {(r["method"], r["route"]): r for r in summary["requests"]["routes"]}
    assert routes[("GET", "/search")]["requests"] > 0
    assert routes[("POST", "/chat")]["p95_ms"] > 0


def _check_logs(log_file: Path) -> None:
    """One trace ID in the gateway's access log, a provider call and the fake upstream's log."""
    events: dict[str, set[str]] = defaultdict(set)
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("trace_id"):
            events[record["trace_id"]].add(record.get("event"))
    followed = [t for t, seen in events.items()
                if {"request", "provider_call", "upstream_request", "cache"} <= seen]
    assert len(followed) > 10


def test_demo_runs_to_the_end_with_every_figure_non_zero(tmp_path: Path) -> None:
    marker = f"INSTRUMENT_DEMO_TEST_{uuid.uuid4().hex}"
    summary_file = tmp_path / "summary.json"
    env = {"DEMO_SECONDS": str(SECONDS), "GATEWAY_PORT": "0", "FAKE_LLM_PORT": "0",
           "DEMO_DIR": str(tmp_path / "demo"), "DEMO_SUMMARY_JSON": str(summary_file),
           marker: "1"}
    env.pop("OPENAI_API_KEY", None)
    with_prometheus = shutil.which("prometheus") is not None
    try:
        with running([PYTHON, "-m", "examples.gateway.demo"], tmp_path, env) as demo:
            assert demo.proc.wait(timeout=SECONDS + 40) == 0, demo.stderr
        stdout = demo.stdout
        assert _processes_with(marker) == [], "a process started by the demo is still running"
    finally:
        for pid in _processes_with(marker):  # only ever the demo's own leftovers
            os.kill(pid, signal.SIGKILL)

    assert "/metrics/summary" in stdout and "stopped:" in stdout
    assert stdout.count("\n── ") >= 5  # live summaries every 3 s, the followed request, final
    if with_prometheus:
        config = re.search(r"^  prometheus +http://127\.0\.0\.1:\d+ +\(config (\S+);", stdout,
                           re.MULTILINE)
        assert config, stdout
        assert not Path(config.group(1)).parent.exists(), "its data directory was removed"

    summary = json.loads(summary_file.read_text())
    _check_summary(summary)
    _check_printed(_final_block(stdout), summary)
    _check_logs(tmp_path / "demo" / "logs.jsonl")
