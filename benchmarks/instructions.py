"""Instructions per request under ``valgrind --tool=callgrind``: repeatable under any load.

Wall-clock ratios on a shared 2-core machine move by +-30%; instruction counts do not.
Each variant (the bare app, the floor, ours, the alternative) runs in its own process
twice, for N and for 2N in-process requests after the same warm-up; the difference
over N is what one request costs, start-up and warm-up cancelled out. Access logs off,
logging as a fresh process has it (``benchmarks.adapters._logging_for("bare")``).

The decorated call and the openai SDK call (bare, ours, by hand) are counted the same way,
per call.

    python -m benchmarks.instructions [--quick]      (make bench-instructions)
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

VARIANTS = ("bare", "floor", "ours", "alternative")
FRAMEWORKS = {"fastapi": "prometheus-fastapi-instrumentator", "flask": "prometheus-flask-exporter"}
_COLLECTED = re.compile(r"Collected : (\d+)")


def _app(framework: str, variant: str) -> Any:
    from prometheus_client import CollectorRegistry

    from benchmarks import adapters, floor

    if framework == "fastapi":
        from instrument.adapters.starlette import instrument_app

        app = adapters._fastapi_app()
        if variant == "floor":
            floor.starlette(app, floor.Counts())
        elif variant == "alternative":
            from prometheus_fastapi_instrumentator import Instrumentator
            Instrumentator(registry=CollectorRegistry()).instrument(app)
    else:
        from instrument.adapters.flask import instrument_app  # type: ignore[assignment]

        app = adapters._flask_app()
        if variant == "floor":
            floor.flask(app, floor.Counts())
        elif variant == "alternative":
            from prometheus_flask_exporter import PrometheusMetrics
            PrometheusMetrics(app, registry=CollectorRegistry())
    if variant == "ours":
        instrument_app(app, access_log=False)
    return app


#: calls, not requests: the decorator (benchmarks/decorators.py) and the openai SDK call
#: (benchmarks/sdk.py), each variant against the bare call
CALLS = {"decorator": ("bare", "hand", "decorated"),
         "sdk": ("bare", "instrument_openai", "track_provider", "hand")}


def call_child(case: str, variant: str, n: int) -> None:
    """Make 200 warm-up calls, then ``n``."""
    import instrument
    from benchmarks import decorators, sdk

    with instrument.use_trace_id(decorators.TRACE):
        if case == "decorator":
            bare, hand, decorated = decorators._setup()
            fn = {"bare": bare, "hand": hand, "decorated": decorated}[variant]
            for i in range(200 + n):
                fn(i)
            return
        from prometheus_client import CollectorRegistry

        instrument.configure(registry=CollectorRegistry())
        decorators._fresh_logging()
        from instrument import _pricing

        no_otel = sdk.Otel.__new__(sdk.Otel)
        no_otel.instrumentor = None
        plain = sdk._variants(no_otel)[variant][0]
        _pricing.use_genai_prices(False)  # the shipped table, as sdk.py's instrument_openai
        for _ in range(200 + n):
            plain()


def child(framework: str, variant: str, n: int) -> None:
    """Serve 200 warm-up requests, then ``n`` (what callgrind counts the difference of)."""
    from prometheus_client import CollectorRegistry

    import instrument
    from benchmarks import adapters

    instrument.configure(registry=CollectorRegistry())
    adapters._logging_for("bare")
    app = _app(framework, variant)
    if framework == "fastapi":
        run = adapters._asgi_runner(app)
        asyncio.run(run(200))
        asyncio.run(run(n))
    else:
        run = adapters._wsgi_runner(app)
        run(200)
        run(n)


def count(framework: str, variant: str, n: int) -> int:
    """Instructions of one whole child process (callgrind's total)."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, "-m", "benchmarks.instructions", "--child", framework,
                          variant, str(n)], capture_output=True, text=True, check=True)
    return parse_total(out.stderr)


def parse_total(stderr: str) -> int:
    found = _COLLECTED.search(stderr)
    if found is None:
        raise RuntimeError(f"no callgrind total in its output: {stderr[-500:]}")
    return int(found.group(1))


def per_request(framework: str, variant: str, n: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two runs of a variant side by side
        once, twice = pool.map(lambda k: count(framework, variant, k), (n, 2 * n))
    return (twice - once) / n


def main(quick: bool = False) -> dict[str, dict[str, float]]:
    n = 100 if quick else 1000
    results: dict[str, dict[str, float]] = {}
    for case, variants in CALLS.items():
        per = {v: per_request(case, v, n // 5 if case == "sdk" else n) for v in variants}
        results[case] = {f"{v}_instructions": per[v] for v in variants}
        results[case].update({f"{v}_added": per[v] - per["bare"] for v in variants[1:]})
    for framework in FRAMEWORKS:
        per = {variant: per_request(framework, variant, n) for variant in VARIANTS}
        bare = per["bare"]
        out = {f"{v}_instructions": per[v] for v in VARIANTS}
        for variant in ("floor", "ours", "alternative"):
            out[f"{variant}_added"] = per[variant] - bare
        out["over_floor"] = out["ours_added"] / out["floor_added"]
        out["over_alternative"] = out["ours_added"] / out["alternative_added"]
        results[framework] = out
    return results


def report(results: dict[str, dict[str, float]]) -> str:
    lines = ["instructions per request (callgrind; access log off; what each adds to the bare app)"]
    for case, variants in CALLS.items():
        r = results[case]
        lines.append(f"  {case} call: bare {r['bare_instructions']:,.0f}; added: " + ", ".join(
            f"{v} {r[f'{v}_added']:,.0f}" for v in variants[1:]))
    for framework, alternative in FRAMEWORKS.items():
        r = results[framework]
        lines.append(
            f"  {framework}: bare {r['bare_instructions']:,.0f}; added: floor "
            f"{r['floor_added']:,.0f}, ours {r['ours_added']:,.0f} ({r['over_floor']:.2f}x the "
            f"floor, target <= 1.5x), {alternative} {r['alternative_added']:,.0f} (ours "
            f"{r['over_alternative']:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"] and sys.argv[2] in CALLS:
        call_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind): no instruction counts")
    else:
        print(report(main(quick="--quick" in sys.argv)))
