"""docs/opentelemetry.md's set-up runs as written and exports over OTLP/HTTP (to a receiver on
127.0.0.1 named by the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.otel.test_otlp import Receiver, receiver

__all__ = ["receiver"]  # the fixture, imported for pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "opentelemetry.md"

USE = """
import instrument
with instrument.trace_span("work") as span:
    print(span.trace_id, span.span_id)
"""


def snippet(name: str) -> str:
    match = re.search(rf"<!-- docs-test: {name} -->\n```python\n(.*?)```", DOC.read_text(),
                      re.S)
    assert match, f"docs/opentelemetry.md has no snippet tagged {name}"
    return match.group(1)


@pytest.mark.slow
def test_the_documented_setup_exports_the_toolkits_spans(receiver: Receiver) -> None:
    env = {**os.environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
    out = subprocess.run([sys.executable, "-c", snippet("setup") + USE], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    trace_id, span_id = out.stdout.split()
    [span] = receiver.spans()  # flushed as the process exits
    assert (span.name, span.trace_id.hex(), span.span_id.hex()) == ("work", trace_id, span_id)
