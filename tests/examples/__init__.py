"""Tests that run each example as written, as a subprocess, and check what it prints and serves.

``running`` starts the example in a session of its own and always stops that
whole group (workers included), pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


class Example:
    """A running example: its process and what it has written so far."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self._out = out
        self._err = err

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def json_logs(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (other lines, such as banners, are skipped)."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the example exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"example exited with {self.proc.returncode}:\n"
                                     f"{self.stdout}\n{self.stderr}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout}s:\n{self.stderr}")
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the example's process group, SIGKILL after 10 s; then nothing of it is left."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the group is empty: the example and all its children are gone
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def running(args: list[str], tmp_path: Path, env: dict[str, str] | None = None
            ) -> Iterator[Example]:
    """Start ``args`` from the repository root with ``env`` added; stop it on the way out."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=stdout, stderr=stderr,
                                start_new_session=True)
    try:
        yield Example(proc, out, err)
    finally:
        _stop(proc)
