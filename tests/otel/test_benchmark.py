"""``benchmarks/otel.py`` runs (tiny counts, once) and reports every figure; no timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_otel_benchmark_runs_and_reports_every_figure() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.otel", "--quick", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    for framework in ("fastapi", "flask"):
        figures = results[framework]
        assert {"bare_us", "ours_added_us", "ours_bridge_added_us", "bridge_added_us"} <= set(
            figures)
        assert figures["spans"] > 0  # the bridge (and OpenTelemetry's own) really made spans
    for framework in ("fastapi", "flask"):  # the dev extra installs their instrumentations
        assert "bridge_ratio" in results[framework], results[framework]["otel"]
    provider = results["provider"]
    for kind in ("call", "stream"):
        assert {"bare_us", "ours_added_us", "bridge_added_us", "otel_added_us"} <= set(
            provider[kind])
    assert provider["spans"] > 0
    assert out.stderr == ""  # nothing logged: loguru's default handler is on
