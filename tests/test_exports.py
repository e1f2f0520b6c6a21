"""Tests for the public surface: one sorted, complete ``__all__`` in ``instrument/__init__.py``."""

from __future__ import annotations
import __future__

import inspect
import types

import instrument


def public_names() -> set[str]:
    """Public names bound in ``instrument/__init__.py``, excluding submodules and __future__."""
    return {
        name for name, obj in vars(instrument).items()
        if not name.startswith("_")
        and not isinstance(obj, types.ModuleType)
        and not isinstance(obj, __future__._Feature)
    }


def test_all_is_sorted() -> None:
    assert instrument.__all__ == sorted(instrument.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(instrument.__all__) == len(set(instrument.__all__))


def test_every_public_name_is_exported() -> None:
    assert public_names() - set(instrument.__all__) == set()


def test_every_exported_name_exists() -> None:
    missing = [name for name in instrument.__all__ if not hasattr(instrument, name)]
    assert missing == []


def test_exported_classes_and_functions_are_defined_in_instrument() -> None:
    """Nothing third-party is re-exported as if it were ours."""
    for name in instrument.__all__:
        obj = getattr(instrument, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.split(".")[0] == "instrument", (name, obj.__module__)


def test_the_version_is_a_string() -> None:
    assert isinstance(instrument.__version__, str)
