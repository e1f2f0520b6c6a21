"""Throughput and p99 over real sockets: uvicorn (FastAPI) and gunicorn (Flask) loaded by wrk.

For each framework four servers run side by side on 127.0.0.1, one per variant
(``benchmarks/_wire_apps.py``: bare, ours with the access log off, ours with it on and
opted in, the alternative), started and stopped here. uvicorn: one worker, its own
access log off, uvloop and httptools when installed (the ``bench`` extra). gunicorn: one
``gthread`` worker with 4 threads, no access log. Requests carry no ``X-Trace-ID``, so ours
makes a trace ID and sends a ``traceparent`` back for each (its dearer path).

``wrk -t1 -c16 --latency`` loads one server at a time for a fixed time, the variants in
turn, the order reversed every other round, after a warm-up; idle servers cost nothing.
On two or more cores the servers are pinned to CPU 0 and wrk to CPU 1 (``taskset``), so
the load generator does not take the server's core. Throughput and p99 are wrk's own.
Per round, ours is divided by the bare server's (and the alternative's) from the same
round; the median and the range of those ratios are reported.

Targets: ours, access log off, >= 0.95x bare; ours, access log on, >= the alternative.
``--quick`` (CI) uses a tiny keep-alive client in Python instead of wrk: it proves the
servers start, answer and stop; its figures are not wrk's and are not compared.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._wire_apps import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
PATH = "/items/7"
THREADS, CONNECTIONS = 1, 16
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def _pin(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if pinned() else command


def _command(framework: str, port: int) -> list[str]:
    if framework == "fastapi":
        fast = [] if importlib.util.find_spec("uvloop") is None else ["--loop", "uvloop"]
        fast += [] if importlib.util.find_spec("httptools") is None else ["--http", "httptools"]
        return [sys.executable, "-m", "uvicorn", "--factory", "benchmarks._wire_apps:fastapi_app",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--no-access-log", "--log-level", "warning", *fast]
    return [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread",
            "--threads", "4", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "benchmarks._wire_apps:flask_app()"]


def server_kind(framework: str) -> str:
    if framework == "fastapi":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
        return f"uvicorn, 1 worker, {loop} + {parser}"
    return "gunicorn, 1 gthread worker x 4 threads"


def _get(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", PATH)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@contextmanager
def servers(framework: str) -> Iterator[dict[str, int]]:
    """One server per variant, each answering, and every one stopped on the way out."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for variant in VARIANTS:
            ports[variant] = port = _free_port()
            procs[variant] = subprocess.Popen(
                _pin(0, _command(framework, port)), cwd=ROOT,
                env={**os.environ, "BENCH_WIRE": variant}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        for variant, port in ports.items():
            while True:
                if procs[variant].poll() is not None:
                    raise RuntimeError(f"{framework} {variant} server exited "
                                       f"({procs[variant].returncode})")
                try:
                    if _get(port) == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{framework} {variant} server never answered")
                time.sleep(0.1)
        yield ports
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # gunicorn's worker too
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _ms(figure: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", figure)
    if found is None:
        raise ValueError(f"not a wrk duration: {figure!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests per second and the p99 latency (ms) from ``wrk --latency``'s report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if rps is None or p99 is None:
        raise RuntimeError(f"no figures in wrk's report: {out[-800:]}")
    for bad in ("Non-2xx or 3xx responses", "Socket errors"):
        if bad in out:  # a server failing fast would look fast
            raise RuntimeError(f"wrk saw errors: {out[-800:]}")
    return {"rps": float(rps.group(1)), "p99_ms": _ms(p99.group(1))}


def wrk(port: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(_pin(1, ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}",
                                  f"-d{max(int(seconds), 1)}s", "--latency",
                                  f"http://127.0.0.1:{port}{PATH}"]),
                         capture_output=True, text=True, check=True, timeout=seconds + 60)
    return parse_wrk(out.stdout)


def python_client(port: int, requests: int) -> dict[str, float]:
    """A keep-alive client in Python, one connection: for CI, where wrk is not installed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    try:
        start = time.perf_counter()
        for _ in range(requests):
            began = time.perf_counter()
            conn.request("GET", PATH)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status} from {port}")
            times.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    times.sort()
    return {"rps": requests / elapsed, "p99_ms": times[int(0.99 * (len(times) - 1))] * 1e3}


def bench(framework: str, rounds: int, seconds: float, quick: bool) -> dict[str, Any]:
    def load(port: int, warm: bool = False) -> dict[str, float]:
        if quick:
            return python_client(port, 20 if warm else 200)
        return wrk(port, 1 if warm else seconds)

    samples: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with servers(framework) as ports:
        for port in ports.values():
            load(port, warm=True)
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                samples[variant].append(load(ports[variant]))
    out: dict[str, Any] = {"server": server_kind(framework), "rounds": rounds,
                           "seconds": seconds, "client": "python" if quick else "wrk"}
    for variant, figures in samples.items():
        rps = [f["rps"] for f in figures]
        p99 = [f["p99_ms"] for f in figures]
        out[variant] = {"rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
                        "p99_ms": statistics.median(p99), "p99_ms_min": min(p99),
                        "p99_ms_max": max(p99)}

    def ratios(variant: str, against: str) -> dict[str, float]:
        per_round = [a["rps"] / b["rps"] for a, b in zip(samples[variant], samples[against],
                                                           strict=True)]
        return {"median": statistics.median(per_round), "min": min(per_round),
                "max": max(per_round)}

    out["ours_over_bare"] = ratios("ours", "bare")
    out["floor_over_bare"] = ratios("floor", "bare")
    out["ours_access_log_over_alternative"] = ratios("ours_access_log", "alternative")
    out["alternative_over_bare"] = ratios("alternative", "bare")
    out["ours_access_log_over_bare"] = ratios("ours_access_log", "bare")
    return out


def main(quick: bool = False) -> dict[str, Any]:
    use_wrk = not quick and shutil.which("wrk") is not None
    if not quick and not use_wrk:
        print("wrk is not installed (apt-get install wrk): the Python client stands in",
              file=sys.stderr)
    rounds, seconds = (1, 0.0) if quick else (5, 3.0)
    results: dict[str, Any] = {"pinned": pinned(), "cores": os.cpu_count() or 1,
                               "threads": THREADS, "connections": CONNECTIONS}
    for framework in ("fastapi", "flask"):
        results[framework] = bench(framework, rounds, seconds, quick=not use_wrk)
    return results


def report(r: dict[str, Any]) -> str:
    pin = ("servers on CPU 0, wrk on CPU 1 (taskset)" if r["pinned"]
           else "not pinned (taskset missing or one core)")
    lines = [f"over the wire (127.0.0.1; {pin}; {r['threads']} load thread, "
             f"{r['connections']} connections)"]
    for framework, alternative in (("fastapi", "prometheus-fastapi-instrumentator"),
                                   ("flask", "prometheus-flask-exporter")):
        f = r[framework]
        lines.append(f"  {framework} ({f['server']}; {f['client']}, {f['rounds']} rounds"
                     + (f" x {f['seconds']:.0f} s" if f["client"] == "wrk" else "") + ")")
        for variant, label in (("bare", "bare"), ("floor", "the floor"),
                               ("ours", "ours, access log off"),
                               ("ours_access_log", "ours, access log on"),
                               ("alternative", alternative)):
            v = f[variant]
            lines.append(f"    {label}: {v['rps']:,.0f} req/s ({v['rps_min']:,.0f}-"
                         f"{v['rps_max']:,.0f}), p99 {v['p99_ms']:.2f} ms")
        off, on = f["ours_over_bare"], f["ours_access_log_over_alternative"]
        least = f["floor_over_bare"]
        lines.append(f"    ours/bare {off['median']:.3f}x ({off['min']:.3f}-{off['max']:.3f}; "
                     f"target >= 0.95x; the floor/bare {least['median']:.3f}x, "
                     f"{least['min']:.3f}-{least['max']:.3f}); ours with the access log / "
                     f"{alternative} {on['median']:.3f}x ({on['min']:.3f}-{on['max']:.3f}; "
                     f"target >= 1.0x)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(main(quick="--quick" in sys.argv)))
