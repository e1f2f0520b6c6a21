"""gunicorn settings for examples/flask_app.py: several workers, one /metrics adding them all up.

    gunicorn -c examples/gunicorn_multiprocess/gunicorn.conf.py examples.flask_app:app

Each worker is its own process with its own counters. In prometheus-client's
multiprocess mode every worker writes its metrics to files in
PROMETHEUS_MULTIPROC_DIR, and /metrics, whichever worker serves it, reads them
all. The variable must be set before prometheus_client is first imported: here,
in the master, before the workers fork and import the app.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="instrument-metrics-")
    _created = True
else:
    _created = False


def on_starting(server: Any) -> None:
    """Start from an empty directory: files left by an earlier run would be counted again."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server: Any, worker: Any) -> None:
    """A worker died: drop its live gauges (in-progress requests); its counters stay."""
    from instrument.adapters.flask import gunicorn_child_exit  # imported late: see above

    gunicorn_child_exit(server, worker)


def on_exit(server: Any) -> None:
    if _created:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
