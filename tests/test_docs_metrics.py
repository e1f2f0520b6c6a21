"""Tests that docs/metrics.md and the metric catalog agree.

When the catalog changes, regenerate the table in place with
``python -m tests.test_docs_metrics`` (or paste the table a failing test prints).
"""

from __future__ import annotations

import re
from pathlib import Path

from instrument._catalog import CATALOG, MetricSpec, exposed_names

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
START, END = "<!-- catalog-table:start -->", "<!-- catalog-table:end -->"

#: snake_case words in the doc that look like metrics but are not the toolkit's
NOT_METRICS = frozenset({
    "trace_id", "span_id", "parent_span_id", "max_label_values", "trace_span", "use_trace_id",
    "start_http_server", "metrics_summary", "histogram_quantile", "child_exit",
    "mark_process_dead", "multiprocess_mode", "error_type", "cached_input", "cache_write",
    "client_disconnect",
    "instrument_app", "configure_logging", "span_name", "http_request",
    # prometheus-client's own process and platform metrics
    "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
    "process_virtual_memory_bytes", "process_resident_memory_bytes",
    "process_start_time_seconds", "python_info", "python_gc_objects_collected_total",
})
_WORD = re.compile(r"(?<![A-Za-z0-9_.{/])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?![A-Za-z0-9_(])")
_SUFFIXES = ("_total", "_seconds", "_bucket", "_sum", "_count", "_created", "_bytes", "_usd")


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def metric_looking_words(text: str) -> set[str]:
    """snake_case words that start like a catalog metric or end in a metric suffix."""
    prefixes = {spec.name.split("_")[0] + "_" for spec in CATALOG}
    labels = {label for spec in CATALOG for label in spec.labels}
    return {word for word in _WORD.findall(text)
            if (word.startswith(tuple(prefixes)) or word.endswith(_SUFFIXES))
            and word not in labels and word not in NOT_METRICS}


def test_every_catalog_metric_is_documented() -> None:
    text = doc_text()
    missing = [spec.name for spec in CATALOG
               if not re.search(rf"`{re.escape(spec.name)}`", text)]
    assert missing == [], f"undocumented metrics {missing}; the table should be:\n" + table()


def test_no_documented_metric_is_missing_from_the_catalog() -> None:
    known = {name for spec in CATALOG for name in (spec.name, *exposed_names(spec))}
    unknown = sorted(metric_looking_words(doc_text()) - known)
    assert unknown == [], f"docs/metrics.md names metrics the catalog does not have: {unknown}"


def test_the_documented_table_is_the_catalog() -> None:
    text = doc_text()
    assert START in text and END in text
    documented = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert documented == table().strip(), (
        "docs/metrics.md is out of date; run `python -m tests.test_docs_metrics` or paste:\n"
        + table())


def test_the_word_scanner_finds_a_misspelt_metric() -> None:
    """The check above can fail: a typo'd name or a stray suffix is caught."""
    assert metric_looking_words("see `provider_request_total` and cache_hit_ratio_seconds") == {
        "provider_request_total", "cache_hit_ratio_seconds"}
    assert metric_looking_words("the `trace_id` label; `method` and `route`") == set()


# --- the generator -------------------------------------------------------------------


def _bounds(spec: MetricSpec) -> str:
    if spec.kind != "histogram":
        return ""
    return ", ".join(f"{b:g}" for b in spec.buckets) + ", +Inf"


def table() -> str:
    """The metrics table of docs/metrics.md, generated from the catalog."""
    rows = ["| Metric | Type | Labels | Unit | Help | Buckets (upper bounds) |",
            "|---|---|---|---|---|---|"]
    for spec in CATALOG:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "none"
        help_text = spec.help.replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.unit} | {help_text} "
                    f"| {_bounds(spec)} |")
    return "\n".join(rows) + "\n"


def regenerate() -> None:
    """Rewrite the table between the markers in docs/metrics.md."""
    head, rest = doc_text().split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table()}{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    regenerate()
    print(f"rewrote the table in {DOC}")
