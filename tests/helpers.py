"""Test helpers: read metrics the way Prometheus does, over a real socket."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """A parsed ``/metrics`` page (``prometheus_client.parser``), queryable by sample."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text)
                        for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of samples named ``name`` whose labels include ``labels`` (None if none)."""
        found = [s.value for s in self.samples
                 if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(found) if found else None

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(s.labels) for s in self.samples if s.name == name]


def scrape(url: str, accept: str | None = None) -> Scrape:
    """GET a metrics URL and parse it."""
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return Scrape(resp.read().decode())


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value from the registry, 0.0 when absent."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    result = predicate()
    while not result and time.monotonic() < deadline:
        time.sleep(interval)
        result = predicate()
    assert result, f"condition not met within {timeout}s"
    return result


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Boom(Exception):
    """The user's own exception: it must come back out of any decorator unchanged."""


def dropped_async_generator(backend: str) -> Any:
    """Around the GC of an unexhausted async generator: trio warns about it, asyncio does not.

    The wrapper cannot ``await aclose()`` from ``__del__``; the source is finalised by the
    event loop's async-generator hooks exactly as an unwrapped one would be.
    """
    if backend == "trio":
        import pytest

        return pytest.warns(ResourceWarning, match="garbage collected before it had been "
                                                   "exhausted")
    return contextlib.nullcontext()


@contextlib.contextmanager
def serve_asgi(app: Any, **config: Any) -> Iterator[str]:
    """``app`` on uvicorn in a background thread on 127.0.0.1; stopped on the way out,
    pass or fail. ``config`` goes to ``uvicorn.Config``."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           **config))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=10)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"

