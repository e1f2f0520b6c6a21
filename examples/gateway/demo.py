"""The whole demo in one process: fake LLM, gateway, traffic and a live summary.

    python -m examples.gateway.demo            # from the repository root; Ctrl-C to stop

One event loop runs the fake LLM server and the gateway (two uvicorn servers),
the traffic generator, and a printer that fetches the gateway's
``/metrics/summary`` every few seconds. JSON logs go to ``.demo/logs.jsonl``.
If ``prometheus`` is on the PATH it is started too, scraping the gateway.

Environment: GATEWAY_PORT (8080) and FAKE_LLM_PORT (8081), busy ports fall back
to free ones, 0 picks a free one; DEMO_SECONDS (run time, default until Ctrl-C);
DEMO_SUMMARY_JSON (write the final summary there); DEMO_DIR (.demo);
DEMO_PROMETHEUS=0 (do not start Prometheus); OPENAI_API_KEY (see providers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from examples.gateway import fake_llm
from examples.gateway.app import create_app
from examples.gateway.traffic import run_traffic
from instrument import configure_logging, new_trace_id

REPO = Path(__file__).resolve().parents[2]
SUMMARY_EVERY = 3.0


# --- servers ---------------------------------------------------------------------------------

class Server(uvicorn.Server):
    """A uvicorn server that leaves Ctrl-C to the demo: two of them share one process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # the same hook, before uvicorn 0.29
        pass


def listen(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port``, or to a free port if that one is taken (or 0)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    return sock


async def serve(app: Any, sock: socket.socket) -> tuple[Server, asyncio.Task[None]]:
    """Start a uvicorn server on ``sock`` and wait until it accepts connections."""
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=2)
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise RuntimeError(f"server on port {sock.getsockname()[1]} failed to start")
        await asyncio.sleep(0.02)
    return server, task


# --- prometheus ------------------------------------------------------------------------------

class Prometheus:
    """A Prometheus scraping the gateway, with its data in a temporary directory."""

    def __init__(self, binary: str, gateway_port: int, log_path: Path) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="instrument-demo-prometheus-"))
        shipped = REPO / "monitoring" / "prometheus" / "prometheus.yml"
        if shipped.exists() and gateway_port == 8080:
            self.config = shipped  # it scrapes localhost:8080 as job instrument-adapter
        else:
            self.config = self.data / "prometheus.yml"
            self.config.write_text(
                "global: {scrape_interval: 5s}\n"
                "scrape_configs:\n"
                "  - job_name: instrument-adapter\n"
                f"    static_configs: [{{targets: ['127.0.0.1:{gateway_port}']}}]\n")
        with listen(9090) as probe:
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log_path, "wb") as log:
            # Its own session: Ctrl-C reaches the demo only, which stops it in order.
            self.process = subprocess.Popen(
                [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}/tsdb",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--enable-feature=exemplar-storage"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data, ignore_errors=True)


# --- the summary -----------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def render(summary: dict[str, Any], title: str) -> str:
    """The summary as a compact table: requests, providers, cost, cache, SSE."""
    requests = summary["requests"]
    lines = [f"── {title} " + "─" * max(0, 86 - len(title)),
             f"requests   {requests['total']:>5}   error rate {_pct(requests['error_rate'])}"]
    streams = {s["endpoint"] for s in summary["sse"]}
    for r in requests["routes"]:
        latency = (f"p50 {_ms(r.get('p50_ms')):>7}   p95 {_ms(r.get('p95_ms')):>7}"
                   if r.get("p50_ms") is not None or r["route"] not in streams
                   else "a stream: its duration is under sse")
        lines.append(f"  {r['method']:<4} {r['route']:<20} {r['requests']:>5}   "
                     f"errors {_pct(r['error_rate']):>6}   {latency}")
    lines.append(f"{'provider':<18} {'calls':>5} {'errors':>7} {'p50':>7} {'p95':>7} "
                 f"{'ttft50':>7} {'ttft95':>7} {'tokens in':>10} {'cached':>8} {'out':>7} "
                 f"{'cost':>9}")
    for p in summary["providers"]:
        tokens = p["tokens"]
        lines.append(f"  {p['provider'] + '/' + p['model']:<16} {p['requests']:>5} "
                     f"{_pct(p['error_rate']):>7} {_ms(p['p50_ms']):>7} {_ms(p['p95_ms']):>7} "
                     f"{_ms(p['ttft_p50_ms']):>7} {_ms(p['ttft_p95_ms']):>7} "
                     f"{tokens['input']:>10} {tokens['cached_input']:>8} {tokens['output']:>7} "
                     f"{'$' + format(p['cost_usd'], '.4f'):>9}")
    lines.append(f"cost       ${summary['cost_usd']['tokens']:.4f} in tokens")
    for c in summary["caches"]:
        lines.append(f"cache      {c['cache']:<10} hits {c['hits']:>5}   misses {c['misses']:>5}   "
                     f"hit ratio {_pct(c['hit_ratio'])}")
    for s in summary["sse"]:
        outcomes = "  ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items()))
        duration = s["duration"] or {}
        lines.append(f"sse        {s['endpoint']:<10} streams {s['connections']:>5}   "
                     f"active {s['active']:>3}   events {s['events']:>6}   "
                     f"heartbeats {s['heartbeats']:>5}   p50 {_ms(duration.get('p50_ms'))}")
        lines.append(f"           outcomes   {outcomes}")
    return "\n".join(lines)


async def fetch_summary(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/metrics/summary")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


# --- one request, followed through the logs --------------------------------------------------

async def follow_one_request(client: httpx.AsyncClient, log_path: Path) -> str:
    """Send one search with a trace ID of our own and show every log line that carries it."""
    trace_id = new_trace_id()
    async with client.stream("GET", "/search", headers={"X-Trace-ID": trace_id},
                             params={"q": f"What does trace {trace_id[:8]} show?"}) as response:
        async for _ in response.aiter_lines():
            pass
    await asyncio.sleep(0.2)  # the stream's last log lines are written as it closes
    lines = [f"── one request, followed through {log_path} by its trace ID {trace_id}"]
    for raw in log_path.read_text().splitlines():
        record = json.loads(raw)
        if record.get("trace_id") == trace_id:
            what = record.get("event") or record.get("logger")
            lines.append(f"  {record['timestamp'][11:23]}  {what:<17} {record['message']}")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------

def banner(gateway_url: str, fake_port: int, prometheus: Prometheus | None, log_path: Path,
           seconds: float) -> str:
    lines = ["instrument demo: an LLM search gateway, a fake LLM provider and some traffic",
             f"  gateway          {gateway_url}   "
             f"(try: curl -N '{gateway_url}/search?q=what+is+ttft')",
             f"  metrics          {gateway_url}/metrics",
             f"  summary (JSON)   {gateway_url}/metrics/summary",
             f"  fake LLM         http://127.0.0.1:{fake_port}/v1/chat/completions"]
    if prometheus is not None:
        lines.append(f"  prometheus       {prometheus.url}   (config {prometheus.config}; try "
                     "histogram_quantile(0.95, sum by (le, provider) "
                     "(rate(provider_time_to_first_token_seconds_bucket[1m]))))")
    lines.append(f"  JSON logs        {log_path}")
    until = "until Ctrl-C" if math.isinf(seconds) else f"for {seconds:g} s"
    lines.append(f"running {until}; a summary every {SUMMARY_EVERY:g} s")
    return "\n".join(lines)


async def start_prometheus(gateway_port: int, log_path: Path) -> Prometheus | None:
    binary = shutil.which("prometheus")
    if binary is None or os.environ.get("DEMO_PROMETHEUS", "1") == "0":
        return None
    prometheus = Prometheus(binary, gateway_port, log_path)
    await asyncio.sleep(0.5)  # a bad config or a lost port race ends it at once
    if prometheus.process.poll() is not None:
        print(f"(prometheus exited at start; see {log_path})")
        prometheus.stop()
        return None
    return prometheus


def stop_on_signals() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM; a second Ctrl-C interrupts the shutdown itself."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stop.set()
        loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


async def print_summaries(client: httpx.AsyncClient, stop: asyncio.Event, seconds: float
                          ) -> None:
    """A summary every SUMMARY_EVERY seconds, until ``stop`` is set or ``seconds`` have passed."""
    started = time.monotonic()
    while not stop.is_set():
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(SUMMARY_EVERY, left))
        elapsed = time.monotonic() - started
        print("\n" + render(await fetch_summary(client), f"{elapsed:.0f} s"), flush=True)


async def run() -> None:
    seconds = float(os.environ.get("DEMO_SECONDS") or math.inf)
    demo_dir = Path(os.environ.get("DEMO_DIR", ".demo"))
    demo_dir.mkdir(parents=True, exist_ok=True)
    log_path = demo_dir / "logs.jsonl"
    log_file = open(log_path, "w")  # noqa: SIM115 - open for the whole run, closed below
    configure_logging("DEBUG", sink=log_file)
    for noisy in ("httpcore", "httpx"):  # their per-request DEBUG lines would drown ours
        logging.getLogger(noisy).setLevel(logging.WARNING)

    wanted = {"FAKE_LLM_PORT": int(os.environ.get("FAKE_LLM_PORT", "8081")),
              "GATEWAY_PORT": int(os.environ.get("GATEWAY_PORT", "8080"))}
    fake_sock, gateway_sock = listen(wanted["FAKE_LLM_PORT"]), listen(wanted["GATEWAY_PORT"])
    fake_port, gateway_port = fake_sock.getsockname()[1], gateway_sock.getsockname()[1]
    for name, port in zip(wanted, (fake_port, gateway_port), strict=True):
        if wanted[name] not in (0, port):
            print(f"(port {wanted[name]} is busy: {name} falls back to {port})")
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    servers: list[tuple[Server, asyncio.Task[None]]] = []
    prometheus: Prometheus | None = None
    traffic: asyncio.Task[None] | None = None
    try:
        servers.append(await serve(fake_llm.app, fake_sock))
        servers.append(await serve(create_app(f"http://127.0.0.1:{fake_port}/v1"), gateway_sock))
        prometheus = await start_prometheus(gateway_port, demo_dir / "prometheus.log")
        print(banner(gateway_url, fake_port, prometheus, log_path, seconds), flush=True)

        stop = stop_on_signals()
        started = time.monotonic()
        traffic = asyncio.create_task(run_traffic(gateway_url))
        async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as client:
            await print_summaries(client, stop, seconds)
            traffic.cancel()
            await asyncio.gather(traffic, return_exceptions=True)
            print("\n" + await follow_one_request(client, log_path), flush=True)
            summary = await fetch_summary(client)
        print("\n" + render(summary, f"final, after {time.monotonic() - started:.0f} s"),
              flush=True)
        target = os.environ.get("DEMO_SUMMARY_JSON")
        if target:
            Path(target).write_text(json.dumps(summary, indent=2))
    finally:  # also on errors and a second Ctrl-C: nothing is left running
        if traffic is not None and not traffic.done():
            traffic.cancel()
            await asyncio.gather(traffic, return_exceptions=True)
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in servers), return_exceptions=True)
        if prometheus is not None:
            prometheus.stop()
        log_file.close()
    print("stopped: servers closed, traffic and Prometheus stopped", flush=True)


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
