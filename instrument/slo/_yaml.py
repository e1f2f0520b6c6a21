"""Reading a spec and writing rules as YAML, through PyYAML (the ``slo`` extra)."""

from __future__ import annotations

from typing import Any

try:
    import yaml
except ImportError:  # the extra is optional: _require() says which one fixes it
    yaml = None  # type: ignore[assignment]  # checked by _require() before every use

MISSING = ("instrument.slo reads and writes YAML with PyYAML, which is not installed: "
           "pip install 'llm-instrument[slo]'")


def _require() -> None:
    if yaml is None:
        raise ImportError(MISSING)


def load(text: str) -> Any:
    """The document in ``text``: YAML, or JSON (which is YAML too)."""
    _require()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        from instrument.slo._spec import SpecError

        raise SpecError(f"the spec is not valid YAML or JSON: {exc}") from None


def dump(document: Any) -> str:
    """``document`` as block YAML, keys in their order, multi-line strings as ``|`` blocks."""
    _require()

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True  # a rule file reads better with its labels spelt out each time

    def string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, string)
    return yaml.dump(document, Dumper=Dumper, sort_keys=False, width=10**6, allow_unicode=True)
