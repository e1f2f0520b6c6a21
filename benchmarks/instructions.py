"""Instructions per operation under ``valgrind --tool=callgrind``: repeatable under any load.

Wall-clock ratios on a shared 2-core machine move by +-30%; instruction counts do not.
Each case (a decorated call, an openai SDK call, a FastAPI request, a Flask request) runs in
one process under callgrind, its variants (the bare one, the floor, ours, the alternative,
by hand) one after another; each variant counts N and then 2N operations after its warm-up,
and the difference over N is what one costs (``benchmarks/_callgrind.py``). Access logs off,
logging as a fresh process has it (``benchmarks.adapters._logging_for("bare")``).

    python -m benchmarks.instructions [--quick]      (make bench-instructions)
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks import _callgrind

VARIANTS = ("bare", "floor", "ours", "alternative")
FRAMEWORKS = {"fastapi": "prometheus-fastapi-instrumentator", "flask": "prometheus-flask-exporter"}


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


def call_child(case: str, n: int) -> None:
    """Every variant of ``case``, one after another (``_callgrind.measure``)."""
    import instrument
    from benchmarks import decorators, sdk

    with instrument.use_trace_id(decorators.TRACE):
        if case == "decorator":
            bare, hand, decorated = decorators._setup()
            fns = {"bare": bare, "hand": hand, "decorated": decorated}
            for variant in CALLS[case]:
                _callgrind.measure(n, lambda fn=fns[variant]: lambda k: [fn(i) for i in range(k)])
            return
        from prometheus_client import CollectorRegistry

        instrument.configure(registry=CollectorRegistry())
        decorators._fresh_logging()
        from instrument import _pricing

        no_otel = sdk.Otel.__new__(sdk.Otel)
        no_otel.instrumentor = None
        variants = sdk._variants(no_otel)
        _pricing.use_genai_prices(False)  # the shipped table, as sdk.py's instrument_openai
        for variant in CALLS[case]:
            plain = variants[variant][0]
            _callgrind.measure(n, lambda plain=plain: lambda k: [plain() for _ in range(k)])


def child(framework: str, n: int) -> None:
    """Every variant's app, served in-process one after another (``_callgrind.measure``)."""
    from prometheus_client import CollectorRegistry

    import instrument
    from benchmarks import adapters

    instrument.configure(registry=CollectorRegistry())
    adapters._logging_for("bare")
    for variant in VARIANTS:
        app = _app(framework, variant)
        if framework == "fastapi":
            served = adapters._asgi_runner(app)
            _callgrind.measure(n, lambda served=served: lambda k: asyncio.run(served(k)))
        else:
            _callgrind.measure(n, lambda app=app: adapters._wsgi_runner(app))


#: operations per measured segment: a decorated call, an openai SDK call (a few million
#: instructions), an in-process request
SIZES = {"decorator": 2000, "sdk": 24, "fastapi": 400, "flask": 400}
QUICK_SIZES = {"decorator": 50, "sdk": 3, "fastapi": 20, "flask": 20}


def main(quick: bool = False, cases: tuple[str, ...] = (*CALLS, *FRAMEWORKS)
         ) -> dict[str, dict[str, float]]:
    """Each case in its own process under callgrind, two at a time (one per core)."""
    sizes = QUICK_SIZES if quick else SIZES

    def one(case: str) -> dict[str, float]:
        variants = CALLS.get(case, VARIANTS)
        return _callgrind.per_operation("benchmarks.instructions", [case, str(sizes[case])],
                                        variants, sizes[case])

    with ThreadPoolExecutor(2) as pool:
        counted = dict(zip(cases, pool.map(one, cases), strict=True))
    results: dict[str, dict[str, float]] = {}
    for case, per in counted.items():
        variants = CALLS.get(case, VARIANTS)
        out = {f"{v}_instructions": per[v] for v in variants}
        out.update({f"{v}_added": per[v] - per["bare"] for v in variants[1:]})
        if case in FRAMEWORKS:
            out["over_floor"] = out["ours_added"] / out["floor_added"]
            out["over_alternative"] = out["ours_added"] / out["alternative_added"]
        results[case] = out
    return results


def report(results: dict[str, dict[str, float]]) -> str:
    lines = ["instructions per operation (callgrind, N and 2N in one process; access log off; "
             "what each adds to the bare one)"]
    for case, variants in CALLS.items():
        if case in results:
            r = results[case]
            lines.append(f"  {case} call: bare {r['bare_instructions']:,.0f}; added: " +
                         ", ".join(f"{v} {r[f'{v}_added']:,.0f}" for v in variants[1:]))
    for framework, alternative in FRAMEWORKS.items():
        if framework in results:
            r = results[framework]
            lines.append(
                f"  {framework}: bare {r['bare_instructions']:,.0f}; added: floor "
                f"{r['floor_added']:,.0f}, ours {r['ours_added']:,.0f} ({r['over_floor']:.2f}x "
                f"the floor, target <= 1.5x), {alternative} {r['alternative_added']:,.0f} (ours "
                f"{r['over_alternative']:.2f}x)")
    return "\n".join(lines)


def everything(quick: bool = False) -> dict[str, Any]:
    """For ``benchmarks.run``: these counts and the OpenTelemetry bridge's
    (``benchmarks.otel.instructions``), or why there are none."""
    if shutil.which("valgrind") is None:
        return {"missing": "valgrind is not installed (make bench installs it)"}
    from benchmarks import otel

    if quick:  # CI: the machinery once, on the lightest case (a callgrind start-up is ~20 s)
        return {"requests": main(quick, cases=("decorator",)), "otel": {}, "peers": {}}
    from benchmarks import peers

    return {"requests": main(quick), "otel": otel.instructions(quick),
            "peers": peers.instructions(quick)}


def report_everything(results: dict[str, Any]) -> str:
    if "missing" in results:
        return f"instructions: not counted ({results['missing']})"
    from benchmarks import otel

    lines = [report(results["requests"])]
    if results["otel"]:
        lines.append(otel.report_instructions(results["otel"]))
    counted = results.get("peers") or {}
    if "missing" in counted:
        lines.append(f"LLM-layer peers, instructions: not counted ({counted['missing']})")
    elif counted:
        ours = results["requests"]["sdk"]["instrument_openai_added"]
        lines.append("LLM-layer peers, instructions added per openai plain call (callgrind, "
                     f"in .venv-peers): instrument_openai {ours:,.0f}; " + ", ".join(
                         f"{peer} {c['added']:,.0f} (ours {ours / c['added']:.2f}x)"
                         for peer, c in counted.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"] and sys.argv[2] in CALLS:
        call_child(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    elif shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind): no instruction counts")
    else:
        print(report(main(quick="--quick" in sys.argv)))
