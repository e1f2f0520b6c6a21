"""Tests for packaging: a wheel and an editable install ship ``instrument`` and nothing else.

Each install goes into its own fresh virtual environment and is imported from a
temporary directory, so the repository on ``sys.path`` cannot hide a mistake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

PROBE = """
import json, sys
from importlib import metadata, resources
import instrument, instrument.adapters
out = {"instrument": instrument.__file__, "adapters_package": instrument.adapters.__file__,
       "version": metadata.version("llm-instrument"),
       "py_typed": resources.files("instrument").joinpath("py.typed").is_file(),
       "prices": resources.files("instrument").joinpath("data", "prices.json").is_file()}
try:
    import adapters
    out["top_level_adapters"] = getattr(adapters, "__file__", repr(adapters))
except ModuleNotFoundError:
    out["top_level_adapters"] = None
print(json.dumps(out))
"""


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=240, check=False)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the build reads, so building leaves no build/ or egg-info in the repo."""
    dest = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("instrument", "adapters"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for path in ROOT.iterdir():
        if path.is_file() and (path.name in ("pyproject.toml", "setup.cfg", "MANIFEST.in")
                               or path.name.startswith(("README", "LICENSE"))):
            shutil.copy2(path, dest / path.name)
    return dest


def make_venv(where: Path) -> Path:
    run(sys.executable, "-m", "venv", where, cwd=where.parent)
    return where / "bin" / "python"


def probe(python: Path, cwd: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(run(python, "-c", PROBE, cwd=cwd))
    return doc


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source, cwd=source)
    (built,) = out.glob("llm_instrument-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = make_venv(tmp_path_factory.mktemp("regular") / "venv")
    run(python, "-m", "pip", "install", "-q", wheel, cwd=wheel.parent)
    return probe(python, tmp_path_factory.mktemp("elsewhere"))


@pytest.fixture(scope="module")
def editable(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = make_venv(tmp_path_factory.mktemp("editable") / "venv")
    run(python, "-m", "pip", "install", "-q", "-e", source, cwd=source.parent)
    doc = probe(python, tmp_path_factory.mktemp("elsewhere"))
    doc["source"] = str(source)
    return doc


def test_the_wheel_contains_only_the_instrument_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = {n.split("/")[0] for n in names}
        dist_info = next(n for n in top_level if n.endswith(".dist-info"))
        assert top_level == {"instrument", dist_info}
        if f"{dist_info}/top_level.txt" in names:
            assert zf.read(f"{dist_info}/top_level.txt").decode().split() == ["instrument"]
    assert "instrument/py.typed" in names
    for module in (ROOT / "adapters").glob("*.py"):
        assert f"instrument/adapters/{module.name}" in names, module.name
    for module in (ROOT / "instrument" / "slo").glob("*.py"):
        assert f"instrument/slo/{module.name}" in names, module.name
    if (ROOT / "instrument" / "data" / "prices.json").exists():
        assert "instrument/data/prices.json" in names


def test_a_regular_install_imports_instrument_and_its_adapters(installed: dict[str, Any]) -> None:
    assert "site-packages" in installed["instrument"]
    assert Path(installed["adapters_package"]).parent == Path(installed["instrument"]).parent / \
        "adapters"
    assert installed["version"]


def test_a_regular_install_has_no_top_level_adapters(installed: dict[str, Any]) -> None:
    assert installed["top_level_adapters"] is None


def test_a_regular_install_ships_py_typed_and_the_price_table(installed: dict[str, Any]) -> None:
    assert installed["py_typed"] is True
    if (ROOT / "instrument" / "data" / "prices.json").exists():
        assert installed["prices"] is True


def test_an_editable_install_maps_instrument_adapters_to_the_adapters_folder(
        editable: dict[str, Any]) -> None:
    source = Path(editable["source"])
    assert Path(editable["instrument"]) == source / "instrument" / "__init__.py"
    assert Path(editable["adapters_package"]) == source / "adapters" / "__init__.py"


def test_an_editable_install_has_no_top_level_adapters(editable: dict[str, Any]) -> None:
    assert editable["top_level_adapters"] is None
