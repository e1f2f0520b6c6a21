"""Run every benchmark and print the ratios: ``make bench`` (``--quick`` for CI's smoke run).

The cases are the ``CASES`` list: each a ``Case(name, run, report)`` where ``run(quick)``
returns the figures (JSON-able) and ``report(figures)`` prints them. Adding a benchmark
module is one line here, e.g.::

    Case("memory", memory.main, memory.report),

(``report`` may be left out: the figures are then printed as JSON). ``--results PATH``
also writes a Markdown file (``benchmarks/RESULTS.md``): the machine, the versions, every
case's report and the targets table (``benchmarks/results.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import adapters, decorators, instructions, memory, otel, peers, scrape, sdk, wire
from benchmarks import logging as logging_bench


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[bool], Any]
    report: Callable[[Any], str] = lambda figures: json.dumps(figures, indent=2)


CASES: list[Case] = [
    Case("decorators", decorators.main, decorators.report),
    Case("adapters", adapters.main, adapters.report),
    Case("logging", logging_bench.main, logging_bench.report),
    Case("sdk", sdk.main, sdk.report),
    Case("peers", peers.main, peers.report),
    Case("scrape", scrape.main, scrape.report),
    Case("memory", memory.main, memory.report),
    Case("wire", wire.main, wire.report),
    Case("otel", otel.main, otel.report),
    Case("instructions", instructions.everything, instructions.report_everything),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: proves it runs")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    parser.add_argument("--results", metavar="PATH", help="also write RESULTS.md there")
    parser.add_argument("--only", nargs="*", help="run only these cases")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        start = time.perf_counter()
        results[case.name] = case.run(args.quick)
        seconds[case.name] = time.perf_counter() - start
        if not args.quick:  # progress (stderr stays empty in CI's quick run)
            print(f"{case.name}: {seconds[case.name]:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for case in CASES:
            if case.name in results:
                print(case.report(results[case.name]))
    if args.results:
        from benchmarks import results as results_md

        with open(args.results, "w") as out:
            out.write(results_md.markdown(results, seconds, CASES, quick=args.quick))


if __name__ == "__main__":
    main()
