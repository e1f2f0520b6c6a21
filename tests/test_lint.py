"""ruff and mypy (strict) stay clean; mypy sees the package laid out as it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "instrument", "adapters",
                          "tests", "examples", "benchmarks"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean_on_the_installed_layout(tmp_path: Path) -> None:
    """Type checkers do not follow the editable install's finder, so check a copy laid out
    like a regular install: instrument/ with adapters/ inside it as instrument/adapters/."""
    package = tmp_path / "instrument"
    shutil.copytree(ROOT / "instrument", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "adapters", package / "adapters",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / ".cache"),
                          "-p", "instrument"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
