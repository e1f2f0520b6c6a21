"""instrument: lifecycle-correct observability for LLM applications and gateways.

Trace IDs travel through ``contextvars`` and HTTP headers, metrics go to
Prometheus (histograms with trace-ID exemplars, bounded labels), and log
lines are JSON through loguru. Framework adapters live in
``instrument.adapters`` and are imported only when asked for.
"""

from __future__ import annotations

from instrument._attempts import mark_fallback
from instrument._cache import record_cache, track_cache
from instrument._catalog import CATALOG, MetricSpec
from instrument._context import get_span_id, get_trace_id, new_trace_id
from instrument._exposition import (
    MetricsServer,
    make_asgi_app,
    make_wsgi_app,
    metrics_summary,
    start_http_server,
)
from instrument._logging import configure_logging
from instrument._metrics import configure, gunicorn_child_exit
from instrument._pricing import Price, get_price, load_prices, use_genai_prices
from instrument._propagation import extract_trace_id, inject_headers, trace_headers
from instrument._provider import record_usage, track_provider
from instrument._span import Span, trace_span, use_trace_id
from instrument._sse import HEARTBEAT, track_sse

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "HEARTBEAT",
    "MetricSpec",
    "MetricsServer",
    "Price",
    "Span",
    "configure",
    "configure_logging",
    "extract_trace_id",
    "get_price",
    "get_span_id",
    "get_trace_id",
    "gunicorn_child_exit",
    "inject_headers",
    "load_prices",
    "make_asgi_app",
    "make_wsgi_app",
    "mark_fallback",
    "metrics_summary",
    "new_trace_id",
    "record_cache",
    "record_usage",
    "start_http_server",
    "trace_headers",
    "trace_span",
    "track_cache",
    "track_provider",
    "track_sse",
    "use_genai_prices",
    "use_trace_id",
]
