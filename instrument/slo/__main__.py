"""The command line: ``python -m instrument.slo rules SPEC [-o FILE]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from instrument.slo import SpecError, load_spec, render_rules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m instrument.slo",
                                     description="Prometheus rules from an SLO spec.")
    commands = parser.add_subparsers(dest="command", required=True)
    rules = commands.add_parser("rules", help="print the recording and alerting rules")
    rules.add_argument("spec", type=Path, help="the SLO spec, YAML or JSON (docs/slo.md)")
    rules.add_argument("-o", "--output", type=Path, help="write to this file, not stdout")
    args = parser.parse_args(argv)
    try:
        text = render_rules(load_spec(args.spec), str(args.spec))
    except (SpecError, ImportError, OSError) as exc:
        print(f"error: {args.spec}: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
