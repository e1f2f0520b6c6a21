"""Faults in the toolkit itself: a log sink that raises or blocks, a collector that raises on
collect, labels past ``max_label_values``, a price file missing or malformed, a metrics port
taken, ``PROMETHEUS_MULTIPROC_DIR`` missing or not a writable directory.

For each: the host's results and exceptions are exactly those of the same function or app
uninstrumented; the fault is counted (``instrument_internal_errors_total``, or the metric
made for it) or refused at configuration time with an error that says what to fix; and the
counts recorded before it are still there after (a parsed scrape before and after)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from starlette.responses import PlainTextResponse

import instrument
from instrument import _pricing, start_http_server, track_provider
from instrument.adapters.fastapi import instrument_app
from tests.conftest import LogCapture
from tests.helpers import Scrape, free_port, scrape, serve_asgi, wait_until
from tests.reliability.planted import COLLECTED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


class Refused(Exception):
    """The host's own exception."""


REFUSED = Refused("no", 7)


def work(n: int, model: str = "gpt-4o-mini") -> dict[str, Any]:
    """The host's function: a result, or its own exception (the same object each time)."""
    if n % 5 == 4:
        raise REFUSED
    return {"n": n, "model": model, "usage": {"prompt_tokens": 10 * n, "completion_tokens": n}}


tracked = track_provider("openai")(work)


def outcomes(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> list[Any]:
    """What each call gave: ("ok", result) or ("raised", the exception object)."""
    found: list[Any] = []
    for args in calls:
        try:
            found.append(("ok", fn(*args)))
        except Exception as exc:
            found.append(("raised", exc))
    return found


CALLS = [(n,) for n in range(20)]


def same_as_uninstrumented(calls: list[tuple[Any, ...]] = CALLS) -> None:
    got = outcomes(tracked, calls)
    assert got == outcomes(work, calls)
    raised = [o[1] for o in got if o[0] == "raised"]
    assert raised and all(exc is REFUSED for exc in raised)  # the very object, untouched


def host_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{n}")
    def item(n: int) -> PlainTextResponse:
        if n == 13:
            raise HTTPException(418, "unlucky")
        logger.info("item {}", n)
        return PlainTextResponse(f"item {n}")

    return app


def responses(app: Any, paths: list[str]) -> list[tuple[int, str]]:
    transport = httpx.ASGITransport(app=app)

    async def main() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as client:
            return [((r := await client.get(p)).status_code, r.text) for p in paths]

    import asyncio

    return asyncio.run(main())


PATHS = ["/items/1", "/items/13", "/items/x", "/nowhere", "/items/2"]


def app_same_as_uninstrumented() -> None:
    assert responses(instrument_app(host_app()), PATHS) == responses(host_app(), PATHS)


def scraped(registry: CollectorRegistry) -> Scrape:
    return Scrape(generate_latest(registry).decode())


def internal_errors(metrics: Scrape, where: str) -> float:
    return metrics.value("instrument_internal_errors_total", where=where) or 0.0


def recorded_before(registry: CollectorRegistry) -> Scrape:
    """Some calls recorded before the fault; what the scrape says of them."""
    outcomes(tracked, CALLS)
    before = scraped(registry)
    assert before.value("provider_requests_total", status="ok") == 16
    return before


def kept(before: Scrape, after: Scrape, more: float = 0) -> None:
    """Every count recorded before is still there after (plus ``more`` ok calls)."""
    assert after.value("provider_requests_total", status="ok") == \
        before.value("provider_requests_total", status="ok") + more
    assert after.value("provider_requests_total", status="error") >= \
        before.value("provider_requests_total", status="error")  # type: ignore[operator]
    assert after.value("provider_tokens_total", type="input") >= \
        before.value("provider_tokens_total", type="input")  # type: ignore[operator]


# -- log sinks -------------------------------------------------------------------------------

class RaisingSink:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, text: str) -> None:
        self.calls += 1
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("queue_size", [0, 100], ids=["in-call", "queued"])
def test_a_raising_sink_changes_no_result_and_every_failure_is_counted(
        registry: CollectorRegistry, queue_size: int, capsys: pytest.CaptureFixture[str],
        expect_internal_errors: None) -> None:
    """Each failed write is counted (``where="log_sink"``) and reported once on stderr as one
    JSON line; the calls, the served app and the counts are untouched."""
    before = recorded_before(registry)
    sink = RaisingSink()
    instrument.configure_logging("DEBUG", sink=sink, queue_size=queue_size)
    same_as_uninstrumented()
    app_same_as_uninstrumented()
    wait_until(lambda: sink.calls and internal_errors(scraped(registry), "log_sink")
               == sink.calls)
    instrument.configure_logging("INFO", sink=LogCapture())  # the queue's writer drained
    after = scraped(registry)
    assert internal_errors(after, "log_sink") == sink.calls >= 1
    kept(before, after, more=16)
    err = capsys.readouterr().err
    COLLECTED.add(err)  # read here, so not in pytest's capture: the run's search sees it
    reports = [json.loads(line) for line in err.splitlines()
               if '"instrument_internal_error"' in line]
    assert [(r["where"], r["error_type"]) for r in reports] == [("log_sink", "OSError")]


class BlockingSink:
    """Blocks every write until released; counts the lines it was given."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.lines = 0

    def write(self, text: str) -> None:
        self.entered.set()
        assert self.release.wait(60), "never released"
        self.lines += text.count("\n")


def test_a_blocking_sink_without_a_queue_holds_the_call_then_gives_its_result(
        registry: CollectorRegistry) -> None:
    """queue_size=0 (the default) writes in the logging call: a sink that blocks holds the
    call that logs (documented), which then returns exactly its own result."""
    before = recorded_before(registry)
    sink = BlockingSink()
    instrument.configure_logging("INFO", sink=sink)
    got: list[Any] = []
    caller = threading.Thread(target=lambda: got.append(outcomes(tracked, CALLS)))
    caller.start()
    try:
        assert sink.entered.wait(30)
        assert got == []  # held in its first log line, while the sink blocks
    finally:
        sink.release.set()
        caller.join(60)
    assert not caller.is_alive()
    assert got == [outcomes(work, CALLS)]
    after = scraped(registry)
    kept(before, after, more=16)
    assert internal_errors(after, "log_sink") == 0
    assert after.value("instrument_log_lines_dropped_total") == 0


def test_a_blocking_sink_behind_the_queue_never_holds_a_call_and_drops_are_counted(
        registry: CollectorRegistry) -> None:
    """queue_size=8: while the sink blocks every call returns its result; lines past the
    queue are dropped and counted, and written + dropped = every line logged."""
    before = recorded_before(registry)
    sink = BlockingSink()
    instrument.configure_logging("INFO", sink=sink, queue_size=8)
    calls = [(n,) for n in range(200)]
    got: list[Any] = []
    caller = threading.Thread(target=lambda: got.append(outcomes(tracked, calls)))
    try:
        caller.start()
        caller.join(60)  # returns with the sink still blocked
        assert not caller.is_alive() and not sink.release.is_set()
    finally:
        sink.release.set()
    assert got == [outcomes(work, calls)]
    instrument.configure_logging("INFO", sink=LogCapture())  # drains what waits
    after = scraped(registry)
    dropped = after.value("instrument_log_lines_dropped_total") or 0
    assert dropped > 0
    assert sink.lines + dropped == 200  # one provider_call line per call
    kept(before, after, more=160)
    assert internal_errors(after, "log_sink") == 0


# -- a collector raising on collect -----------------------------------------------------------

class BrokenCollector(Collector):
    def collect(self) -> Iterator[Any]:
        raise RuntimeError("collector broke")


@pytest.fixture
def metrics_routes(registry: CollectorRegistry, request: pytest.FixtureRequest
                   ) -> Iterator[str]:
    """The metrics routes as the app serves them (uvicorn), or from start_http_server."""
    if request.param == "app":
        with serve_asgi(instrument_app(host_app(), registry=registry)) as url:
            yield url + "/metrics"
    else:
        server = start_http_server(0, "127.0.0.1", registry=registry)
        try:
            yield server.url + "/metrics"
        finally:
            server.shutdown()


@pytest.mark.parametrize("metrics_routes", ["app", "start_http_server"], indirect=True)
def test_a_collector_raising_on_collect_fails_the_scrape_only(
        registry: CollectorRegistry, metrics_routes: str) -> None:
    """/metrics, /metrics/summary and /metrics/health answer 503 with the error's type (no
    traceback, no partial page) while it raises, each counted (``where="exposition"``); the
    app's own routes and calls are untouched; once it is gone, every count is back."""
    before = recorded_before(registry)
    assert scrape(metrics_routes).value("provider_requests_total", status="ok") == 16
    broken = BrokenCollector()
    registry.register(broken)
    failed = []
    for route in ("", "/summary", "/health"):
        answer = httpx.get(metrics_routes + route, timeout=10)
        failed.append((answer.status_code, answer.json()))
    assert failed == [(503, {"status": "error", "error": "RuntimeError"})] * 3
    same_as_uninstrumented()
    app_same_as_uninstrumented()
    registry.unregister(broken)
    after = scrape(metrics_routes)
    assert internal_errors(after, "exposition") == 3
    kept(before, after, more=16)
    assert httpx.get(metrics_routes + "/summary", timeout=10).json()["internal_errors"] == 3


# -- labels past max_label_values -------------------------------------------------------------

def test_labels_past_the_limit_fold_into_other_and_are_counted(registry: CollectorRegistry
                                                                ) -> None:
    """max_label_values=5 and 40 models: 5 models and ``other`` are exposed, every call is
    counted (none lost to the fold), each folded call counted as an overflow."""
    instrument.configure(registry=registry, max_label_values=5)
    logs = LogCapture()
    instrument.configure_logging("WARNING", sink=logs)
    calls = [(n, f"model-{n}") for n in range(40)]
    assert outcomes(tracked, calls) == outcomes(work, calls)
    metrics = scraped(registry)
    models = {labels["model"] for labels in metrics.labels_of("provider_requests_total")}
    assert len(models) == 6 and "other" in models
    assert metrics.value("provider_requests_total") == 40
    assert metrics.value("provider_requests_total", model="other") == 35
    # counted once per series folded: each model past the fifth, as ok (bound with the model's
    # series) and as error for those calls that raised
    folded = {(model, "ok") for _n, model in calls[5:]} | {
        (model, "error") for n, model in calls[5:] if n % 5 == 4}
    assert metrics.value("instrument_label_overflow_total", metric="provider_requests_total",
                         label="model") == len(folded) == 42
    warned = [r for r in logs.records if r.get("event") == "label_overflow"]
    assert {(r["metric"], r["label"]) for r in warned} >= {("provider_requests_total", "model")}
    assert len(warned) == len({(r["metric"], r["label"]) for r in warned})  # once each
    assert internal_errors(metrics, "") == 0 and metrics.value(
        "instrument_internal_errors_total") is None


# -- price files -------------------------------------------------------------------------------

BAD_PRICE_FILES = {
    "missing": (None, r"cannot read price file .*nowhere\.json.*No such file"),
    "not JSON": ("{'openai/x': 1", r"price file .* is not valid JSON"),
    "not an object": ("[1, 2]", r"expected a JSON object, got list"),
    "bad key": ('{"gpt-x": {"input": 1, "output": 2}}', r"key 'gpt-x' must be 'provider/model'"),
    "negative": ('{"openai/x": {"input": -1, "output": 2}}', r"'input' must be a finite"),
    "misspelt": ('{"openai/x": {"input": 1, "output": 2, "cached": 0.5}}',
                 r"unknown field\(s\) \['cached'\]"),
    "per 1K": ('{"unit": "USD per 1K tokens", "models": {}}', r"'unit' must be"),
    "bad date": ('{"as_of": "yesterday", "models": {}}', r"'as_of' must be a date"),
    "not UTF-8": (b"\xff\xfe{}", r"is not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_PRICE_FILES, ids=list(BAD_PRICE_FILES))
def test_a_price_file_missing_or_malformed_is_refused_and_changes_nothing(
        registry: CollectorRegistry, tmp_path: Path, case: str) -> None:
    content, message = BAD_PRICE_FILES[case]
    path = tmp_path / "nowhere.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    instrument.load_prices({"openai/gpt-4o-mini": {"input": 1.0, "output": 2.0}})
    before = recorded_before(registry)
    with pytest.raises(ValueError, match=message):
        instrument.load_prices(path)
    with pytest.raises(ValueError, match=message):
        instrument.load_prices(path, replace=True)
    assert instrument.get_price("openai", "gpt-4o-mini") == instrument.Price(1.0, 2.0)
    same_as_uninstrumented()
    after = scraped(registry)
    kept(before, after, more=16)
    cost = after.value("token_cost_usd_total")
    assert cost == pytest.approx(2 * before.value("token_cost_usd_total"))  # type: ignore[operator]


def test_a_broken_shipped_price_table_is_counted_and_the_call_unchanged(
        registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        expect_internal_errors: None) -> None:
    """A damaged install (the shipped prices.json unreadable): calls give their results,
    their counts are kept, and the failed pricing is counted (``where="ProviderCall"``)."""
    before = recorded_before(registry)
    monkeypatch.setattr(_pricing, "_shipped", None)
    monkeypatch.setattr(_pricing, "files", lambda package: tmp_path / "gone")
    same_as_uninstrumented()
    after = scraped(registry)
    kept(before, after, more=16)
    assert internal_errors(after, "ProviderCall") == 15  # the calls with tokens to price


# -- a taken metrics port -----------------------------------------------------------------------

def test_a_taken_metrics_port_is_refused_with_the_port_and_the_fix(registry: CollectorRegistry
                                                                    ) -> None:
    before = recorded_before(registry)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}: .*already in use.*port=0"):
            start_http_server(port, "127.0.0.1", registry=registry)
    finally:
        taken.close()
    same_as_uninstrumented()
    server = start_http_server(0, "127.0.0.1", registry=registry)  # another port still works
    try:
        kept(before, scrape(server.url + "/metrics"), more=16)
    finally:
        server.shutdown()
    assert free_port()


# -- PROMETHEUS_MULTIPROC_DIR --------------------------------------------------------------------

_WORKER = textwrap.dedent("""
    import json, sys
    import instrument
    from instrument import track_provider

    def work(n):
        if n == 3:
            raise KeyError("host's own")
        return n * 2

    tracked = track_provider("openai", "gpt-4o-mini")(work)

    def outcome(fn, n):
        try:
            return ["ok", fn(n)]
        except Exception as exc:
            return ["raised", type(exc).__name__, str(exc)]

    out = {"unconfigured": [outcome(tracked, n) for n in range(5)],
           "plain": [outcome(work, n) for n in range(5)]}
    try:
        instrument.configure()
        out["configure"] = "ok"
    except Exception as exc:
        out["configure"] = [type(exc).__name__, str(exc)]
    out["after"] = [outcome(tracked, n) for n in range(5)]
    print(json.dumps(out))
""")


def multiproc_worker(path: str) -> dict[str, Any]:
    """A fresh process (prometheus-client reads the variable at import, as a gunicorn worker
    does) with PROMETHEUS_MULTIPROC_DIR set to ``path``."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path}
    done = subprocess.run([sys.executable, "-c", _WORKER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_an_unusable_multiprocess_dir_is_refused_at_configure_and_calls_run_on(
        tmp_path: Path, kind: str) -> None:
    path = tmp_path / "multiproc"
    if kind == "a file":
        path.write_text("not a directory")
    out = multiproc_worker(str(path))
    assert out["unconfigured"] == out["plain"] == out["after"]
    assert out["plain"][3] == ["raised", "KeyError", '"host\'s own"']
    error, message = out["configure"]
    assert error == "ValueError"
    assert str(path) in message and "PROMETHEUS_MULTIPROC_DIR" in message
    assert "create" in message  # what to do about it


def test_a_usable_multiprocess_dir_still_configures(tmp_path: Path) -> None:
    """The check refuses only what cannot work."""
    (tmp_path / "multiproc").mkdir()
    out = multiproc_worker(str(tmp_path / "multiproc"))
    assert out["configure"] == "ok"
    assert out["unconfigured"] == out["plain"] == out["after"]
    assert any(p.name.startswith("counter_") for p in (tmp_path / "multiproc").iterdir())
