"""Run every benchmark and print the ratios: ``make bench`` (``--quick`` for CI's smoke run)."""

from __future__ import annotations

import argparse
import json

from benchmarks import adapters, decorators, memory, scrape, sdk
from benchmarks import logging as logging_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: proves it runs")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    results = {"decorators": decorators.main(args.quick), "adapters": adapters.main(args.quick),
               "logging": logging_bench.main(args.quick), "sdk": sdk.main(args.quick),
               "scrape": scrape.main(args.quick), "memory": memory.main(args.quick)}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(decorators.report(results["decorators"]))
        print(adapters.report(results["adapters"]))
        print(logging_bench.report(results["logging"]))
        print(sdk.report(results["sdk"]))
        print(scrape.report(results["scrape"]))
        print(memory.report(results["memory"]))


if __name__ == "__main__":
    main()
