"""The README's snippets run exactly as written and produce what the README says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"


def snippet(name: str) -> str:
    """The python block that follows ``<!-- readme-test: name -->`` in the README."""
    match = re.search(rf"<!-- readme-test: {name} -->\n```python\n(.*?)```", README.read_text(),
                      re.S)
    assert match, f"README has no snippet tagged {name}"
    return match.group(1)


def expected_block(after: str) -> list[str]:
    text = README.read_text()
    start = text.index(after)
    match = re.search(r"```text\n(.*?)```", text[start:], re.S)
    assert match
    return match.group(1).strip().splitlines()


def test_quickstart_has_exactly_the_two_setup_commands() -> None:
    quick = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


@pytest.mark.slow
def test_core_snippet_serves_its_span_in_the_summary(tmp_path: Path) -> None:
    script = tmp_path / "core.py"
    script.write_text(snippet("core"))
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SERVE_SECONDS": "30"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("trace "), line
        trace_id = line.split()[1]
        assert re.fullmatch(r"[0-9a-f]{32}", trace_id)

        def summary() -> dict | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/summary") as r:
                    return json.loads(r.read())
            except OSError:
                return None

        doc = wait_until(summary)
        spans = {s["span"]: s for s in doc["spans"]}
        assert spans["demo"]["count"] == 1
        assert spans["demo"]["p50_ms"] > 0
        assert doc["traces"] == 1
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_decorators_snippet_prints_the_metrics_the_readme_shows(tmp_path: Path) -> None:
    script = tmp_path / "decorators.py"
    script.write_text(snippet("decorators"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip().splitlines()
    assert out == expected_block("<!-- readme-test: decorators -->")


def _serve(cmd: list[str], cwd: Path, port: int, path: str) -> tuple[str, str]:
    """Start a README app as its docs say, GET ``path`` and ``/metrics``, always stop it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def get(url: str) -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return None

        body = wait_until(lambda: get(base + path), timeout=30)
        return body, wait_until(lambda: get(base + "/metrics"))
    finally:
        os.killpg(proc.pid, 15)
        proc.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("framework, command, route", [
    ("fastapi", ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}"],
     "/items/{item_id}"),
    ("flask", ["-m", "flask", "--app", "app", "run", "--port", "{port}"],
     "/items/<int:item_id>"),
    ("aiohttp", ["app.py"], "/items/{item_id}"),
])
def test_framework_snippets_serve_as_written(tmp_path: Path, framework: str,
                                             command: list[str], route: str) -> None:
    (tmp_path / "app.py").write_text(snippet(framework))
    port = free_port()
    cmd = [sys.executable, *(c.format(port=port) for c in command)]
    body, metrics = _serve(cmd, tmp_path, port, "/items/7")
    assert json.loads(body)["item_id"] in (7, "7")
    from tests.helpers import Scrape

    scraped = Scrape(metrics)
    assert scraped.value("http_requests_total", route=route, status="200") == 1


def test_httpx_snippet_sends_the_trace_and_counts_the_call(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("X-Trace-ID"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "client.py").write_text(snippet("httpx"))
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        out = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, timeout=60,
                             env={**os.environ, "URL": url}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "204"
        assert len(received) == 1 and re.fullmatch(r"[0-9a-f]{32}", received[0] or "")
    finally:
        server.shutdown()
        server.server_close()


def test_logs_snippet_writes_json_lines_with_the_trace_and_no_secret(tmp_path: Path) -> None:
    (tmp_path / "logs.py").write_text(snippet("logs"))
    out = subprocess.run([sys.executable, "logs.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'X-Trace-ID': 'req-42'}"
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["message"] for line in lines] == ["calling upstream",
                                                   "stdlib logs carry the trace too"]
    assert all(line["trace_id"] == "req-42" for line in lines)
    assert lines[0]["headers"]["Authorization"] == "[REDACTED]"
    assert lines[1]["logger"] == "myapp"
    assert "sk-secret" not in out.stderr


@pytest.mark.slow
def test_sdks_snippet_streams_from_both_sdks_to_a_local_provider(tmp_path: Path) -> None:
    from tests.fakes.llm_server import serve_fake_llm

    (tmp_path / "sdks.py").write_text(snippet("sdks"))
    with serve_fake_llm() as fake:
        env = {**os.environ, "OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": "sk-test",
               "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-ant-test"}
        out = subprocess.run([sys.executable, "sdks.py"], cwd=tmp_path, timeout=60, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["Hello world", "Hello world"]
        # both calls went out with the trace of their provider call
        assert [r.path for r in fake.received] == ["/v1/chat/completions", "/v1/messages"]
        assert all(re.fullmatch(r"[0-9a-f]{32}", r.headers["x-trace-id"])
                   for r in fake.received)
