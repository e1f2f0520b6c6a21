"""Off, the bridge costs nothing: importing and using the toolkit never imports OpenTelemetry
(a fresh interpreter, its ``sys.modules`` read after decorated calls of every kind)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

import instrument
from instrument import _observe

SCRIPT = r"""
import json, sys
import instrument
from instrument import trace_span, track_provider, track_sse
from instrument._http import ServerRequest

instrument.configure(otel=False)

@track_provider("openai", "gpt-4o-mini")
def call():
    return {"usage": {"prompt_tokens": 3, "completion_tokens": 1}}

@track_sse("/events")
def events():
    yield "data: 1\n\n"

@trace_span("decorated")
def decorated():
    return call()

with trace_span("outer"):
    decorated()
    list(events())
request = ServerRequest("GET", "/", [(b"traceparent",
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
token = request.enter()
request.set_route("/")
request.response_started(200)
request.finish()
request.exit(token)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""


@pytest.mark.slow
def test_the_toolkit_never_imports_opentelemetry_unless_asked() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


def test_off_is_the_default() -> None:
    assert _observe.bridge is None


def test_configure_switches_it_on_and_off_and_rejects_anything_else(
        registry: CollectorRegistry) -> None:
    instrument.configure(registry=registry, otel=True)
    try:
        assert _observe.bridge is not None
        instrument.configure(registry=registry)  # None: left as it is
        assert _observe.bridge is not None
    finally:
        instrument.configure(registry=registry, otel=False)
    assert _observe.bridge is None
    with pytest.raises(ValueError, match="otel must be True, False or None"):
        instrument.configure(registry=registry, otel="yes")  # type: ignore[arg-type]


def test_without_opentelemetry_installed_switching_it_on_says_which_extra() -> None:
    script = ("import sys; sys.modules['opentelemetry'] = None\n"
              "import instrument\n"
              "try:\n    instrument.configure(otel=True)\n"
              "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "pip install 'llm-instrument[otel]'" in out.stdout
