"""The benchmarks run (tiny counts, once): CI proves they work; it never asserts on timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmarks_run_and_report_every_figure() -> None:
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    dec, ada = results["decorators"], results["adapters"]
    assert set(dec) == {"provider_call", "sync_stream", "async_stream", "memory"}
    assert {"bare_us", "hand_added_us", "decorated_added_us", "ratio"} <= set(dec["provider_call"])
    for framework, alternative in (("fastapi", "instrumentator"), ("flask", "exporter")):
        figures = ada[framework]
        assert {"bare_us", "ours_added_us", "ours_access_log_added_us",
                f"{alternative}_added_us", "ratio"} <= set(figures)
        assert all(isinstance(v, float) for v in figures.values())
