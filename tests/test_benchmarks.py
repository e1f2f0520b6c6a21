"""The benchmarks run (tiny counts, once): CI proves they work; it never asserts on timings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmarks_run_and_report_every_figure() -> None:
    """The wire case runs too: in --quick its load is a small Python client (wrk is not needed:
    make test does not install it), and the peers case reports itself not run when
    .venv-peers (made by make bench) is missing."""
    results_md = ROOT / "benchmarks" / ".quick-RESULTS.md"
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json",
                          "--results", str(results_md)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    dec, ada, log = results["decorators"], results["adapters"], results["logging"]
    assert set(dec) == {"provider_call", "sync_stream", "async_stream", "memory"}
    assert {"bare_us", "hand_added_us", "decorated_added_us", "ratio"} <= set(dec["provider_call"])
    for framework, alternative in (("fastapi", "instrumentator"), ("flask", "exporter")):
        figures = ada[framework]
        assert {"bare_us", "ours_added_us", "ours_default_added_us", "ours_access_log_added_us",
                "ours_access_log_devnull_added_us", f"{alternative}_added_us", "ratio",
                "access_log_ratio", "access_log_devnull_ratio", "floor_added_us",
                "floor_ratio", "ours_no_trace_header_added_us", "over_floor",
                "no_trace_header_over_floor"} <= set(figures)
        assert all(isinstance(v, float) for v in figures.values())
    events = ("access", "provider", "sse", "cache")
    assert {"loguru_floor_us", "stdlib_json_us", "structlog_orjson_us"} <= set(log)
    for encoder in ("stdlib", "orjson"):
        assert {f"ours_{e}_{encoder}_ratio" for e in events} <= set(log)
    sdk = results["sdk"]
    for kind in ("call", "stream"):
        assert {"bare_us", "instrument_openai_added_us", "track_provider_added_us"} <= set(
            sdk[kind])
        assert all(isinstance(v, float) for v in sdk[kind].values())
    assert sdk["our_calls"] > 0
    if not sdk["otel"].startswith("not installed"):  # the dev extra installs it
        assert "otel_added_us" in sdk["call"] and sdk["otel_spans"] > 0
    assert {"ours_text_ms", "client_text_ms", "text_ratio", "openmetrics_ratio",
            "summary_ms"} <= set(results["scrape"])
    assert results["scrape"]["samples"] > 2000  # the realistic catalog really was recorded
    assert {"provider_calls", "sse_streams", "random_paths", "random_models",
            "series"} <= set(results["memory"])
    for framework in ("fastapi", "flask"):
        wire = results["wire"][framework]
        assert wire["client"] == "python"
        assert all(wire[v]["rps"] > 0 for v in ("bare", "ours", "ours_access_log",
                                                 "alternative"))
    assert "missing" in results["peers"] or results["peers"]["openlit"]["spans"] > 0
    assert {"fastapi", "flask", "provider"} <= set(results["otel"])
    counted = results["instructions"]  # make bench installs valgrind; make test need not
    if "missing" not in counted:
        decorator = counted["requests"]["decorator"]
        assert decorator["hand_added"] > 0 and decorator["decorated_added"] > 0
    text = results_md.read_text()
    results_md.unlink()
    assert "## Targets" in text and "Quick run" in text
    assert out.stderr == ""  # nothing logged before opt-in: loguru's default handler is on


def test_the_floor_middlewares_do_what_they_stand_for() -> None:
    """The floor the adapters are read against must really echo, count and time."""
    from werkzeug.test import EnvironBuilder

    from benchmarks import floor
    from benchmarks.adapters import _fastapi_app, _flask_app

    counts = floor.Counts()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/items/7", "raw_path": b"/items/7", "root_path": "",
             "query_string": b"", "headers": [(b"x-trace-id", b"floor-1")]}
    asyncio.run(floor.starlette(_fastapi_app(), counts)(scope, receive, send))
    assert (b"x-trace-id", b"floor-1") in sent[0]["headers"]

    started: list[tuple[str, list[tuple[str, str]]]] = []
    app = floor.flask(_flask_app(), counts)
    environ = EnvironBuilder(path="/items/8", headers={"X-Trace-ID": "bad id!"}).get_environ()
    body = app(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
    assert b"".join(body) == b'{"item_id":8}\n'
    body.close()  # type: ignore[attr-defined]
    assert ("X-Trace-ID", "0" * 31 + "1") in started[0][1]  # an invalid ID is replaced

    assert counts.requests == {("GET", "/items/{item_id}", 200): 1,
                               ("GET", "/items/<int:item_id>", 200): 1}
    assert not counts.active
    for histogram in counts.histograms.values():
        assert sum(histogram[:-1]) == 1 and histogram[-1] > 0


def test_the_instruction_count_children_run_every_variant_and_the_dumps_are_read(
        tmp_path: Path) -> None:
    """What callgrind runs must work for every case and variant (outside callgrind here:
    a callgrind start-up alone takes ~20 s); the dumps' totals become per-operation counts."""
    from benchmarks import _callgrind, instructions, otel

    children = [("benchmarks.instructions", case) for case in
                (*instructions.CALLS, *instructions.FRAMEWORKS)]
    children += [("benchmarks.otel", kind) for kind in otel.KINDS]
    for module, case in children:
        out = subprocess.run([sys.executable, "-m", module, "--child", case, "2"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stderr == ""
    for i, total in enumerate((900, 1_000, 3_000, 50, 7_000, 13_000), start=1):
        (tmp_path / f"callgrind.out.{i}").write_text(f"events: Ir\nsummary: {total}\n"
                                                     f"totals: {total}\n")
    (tmp_path / "callgrind.out").write_text("totals: 5\n")  # after the last mark: not read
    totals = _callgrind.segments(tmp_path)
    assert totals == [900, 1_000, 3_000, 50, 7_000, 13_000]
    assert _callgrind.per_variant(totals, ("bare", "ours"), 10) == {"bare": 200.0,
                                                                    "ours": 600.0}
    with pytest.raises(RuntimeError, match="3 per variant"):
        _callgrind.per_variant(totals, ("bare", "ours", "theirs"), 10)
