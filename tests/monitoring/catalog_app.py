"""A stand-in for an instrumented app: every catalog metric, served on loopback and kept moving.

The dashboard and rule tests run against its series, which have the catalog's
names and labels; the end-to-end test runs against the real app instead.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from instrument._catalog import CATALOG

#: One value per label name of the catalog; a second value for the labels that split series.
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "method": ("GET",), "route": ("/chat",), "status": ("200", "500"), "host": ("api.example",),
    "endpoint": ("/stream",), "outcome": ("completed", "client_disconnect"),
    "provider": ("openai",), "model": ("gpt-4o",), "error_type": ("timeout",),
    "type": ("input", "output", "cached_input"), "cache": ("prompt",), "span": ("handler",),
    "where": ("sse",), "metric": ("provider_requests_total",), "label": ("model",),
    "reason": ("no_price", "cancelled"), "to_provider": ("anthropic",),
    "kind": ("requests", "tokens"),
}
#: Template variable values that select the fake data.
SELECTED = {"provider": "openai", "model": "gpt-4o", "route": "/chat", "endpoint": "/stream"}


def _label_sets(labels: tuple[str, ...]) -> list[tuple[str, ...]]:
    sets: list[tuple[str, ...]] = [()]
    for name in labels:
        sets = [(*s, v) for s in sets for v in LABEL_VALUES[name]]
    return sets


class CatalogApp:
    """Every catalog metric in a fresh registry, served on a loopback port and kept moving.

    It stands in for an instrumented app so that the dashboard and the rules
    run against series with the catalog's names and labels.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.children: list[tuple[str, Any]] = []
        for spec in CATALOG:
            kind: Any = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[spec.kind]
            extra = {"buckets": spec.buckets} if spec.kind == "histogram" else {}
            metric = kind(spec.name, spec.help, spec.labels, registry=self.registry, **extra)
            for values in _label_sets(spec.labels):
                child = metric.labels(*values) if values else metric
                self.children.append((spec.kind, child))
        self._stop = threading.Event()
        self._ticks = 0

    def tick(self) -> None:
        self._ticks += 1
        for kind, child in self.children:
            if kind == "counter":
                child.inc()
            elif kind == "gauge":
                child.set(self._ticks)
            else:
                # Spread observations over the buckets so quantiles are finite.
                child.observe(0.02 * (1 + self._ticks % 50),
                              exemplar={"trace_id": f"{self._ticks:032x}"})

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.tick()

    def __enter__(self) -> CatalogApp:
        self.tick()
        self.server, self.server_thread = start_http_server(0, addr="127.0.0.1",
                                                            registry=self.registry)
        self.target = f"127.0.0.1:{self.server.server_port}"
        self.ticker = threading.Thread(target=self._run, name="catalog-ticker", daemon=True)
        self.ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.ticker.join(5)
        self.server.shutdown()
        self.server.server_close()
        self.server_thread.join(5)
