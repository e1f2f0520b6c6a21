"""Reading a spec and writing rules as YAML, through PyYAML (the ``slo`` extra)."""

from __future__ import annotations

from typing import Any

MISSING = ("instrument.slo reads and writes YAML with PyYAML, which is not installed: "
           "pip install 'llm-instrument[slo]'")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # the extra is optional: say which one fixes it
        raise ImportError(MISSING) from None
    return yaml


def load(text: str) -> Any:
    """The document in ``text``: YAML, or JSON (which is YAML too)."""
    yaml = _yaml()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        from instrument.slo._spec import SpecError

        raise SpecError(f"the spec is not valid YAML or JSON: {exc}") from None


def dump(document: Any) -> str:
    """``document`` as block YAML, keys in their order, multi-line strings as ``|`` blocks."""
    yaml = _yaml()

    class Dumper(yaml.SafeDumper):  # type: ignore[misc,name-defined]  # PyYAML is untyped here
        def ignore_aliases(self, data: Any) -> bool:
            return True  # a rule file reads better with its labels spelt out each time

    def string(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, string)
    return str(yaml.dump(document, Dumper=Dumper, sort_keys=False, width=10**6,
                         allow_unicode=True))
