"""Instructions per operation, several variants in one process under callgrind.

A child process run under ``valgrind --tool=callgrind --dump-before=getppid`` writes a dump
each time it calls ``os.getppid()`` (nothing else on these paths calls it): ``mark()``. For
each variant the child sets up and warms up, marks, runs N operations, marks, runs 2N more and
marks; the difference between the two measured segments, over N, is one operation's cost,
with the cost of a mark and of the loop's set-up cancelled out. One process measures every
variant, so a callgrind start-up (20-30 s of imports under valgrind) is paid once per case,
not twice per variant.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_TOTALS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)


def mark() -> None:
    """Ends a segment: callgrind dumps the counts since the last one."""
    os.getppid()


def measure(n: int, setup: Callable[[], Callable[[int], Any]]) -> None:
    """In the child: ``setup()`` returns ``run(k)`` doing k operations (warm-up included in
    the set-up segment); then the N and 2N segments."""
    run = setup()
    run(max(n // 5, 1))  # warm: first-use lookups and caches stay out of the segments
    gc.collect()
    gc.freeze()  # what earlier variants left alive is not rescanned by this one's collections
    mark()
    run(n)
    mark()
    run(2 * n)
    mark()


def per_operation(module: str, args: Sequence[str], variants: Sequence[str],
                  n: int, python: str = sys.executable, flag: str = "--child"
                  ) -> dict[str, float]:
    """Run ``python -m module --child *args`` under callgrind; it measures ``variants`` in
    order, each with ``measure(n, ...)``. Returns instructions per operation by variant."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-before=getppid",
             f"--callgrind-out-file={out}", python, "-m", module, flag, *args],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{module} {' '.join(args)} failed under callgrind: "
                               f"{done.stderr[-2000:]}")
        return per_variant(segments(Path(tmp)), variants, n)


def segments(directory: Path) -> list[int]:
    """Each dump's instruction total, in the order callgrind wrote them (``out.1``, ...;
    the last file, ``out`` itself, is what ran after the last mark)."""
    dumps = sorted(directory.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    return [_total(p) for p in dumps]


def per_variant(totals: list[int], variants: Sequence[str], n: int) -> dict[str, float]:
    """Three segments per variant (set-up, N, 2N): (2N - N) / N each."""
    if len(totals) != 3 * len(variants):
        raise RuntimeError(f"{len(totals)} callgrind dumps, expected 3 per variant "
                           f"({len(variants)} variants): did something else call getppid?")
    return {variant: (totals[3 * i + 2] - totals[3 * i + 1]) / n
            for i, variant in enumerate(variants)}


def _total(dump: Path) -> int:
    found = _TOTALS.search(dump.read_text(errors="replace"))
    if found is None:
        raise RuntimeError(f"no totals line in {dump.name}")
    return int(found.group(1))
