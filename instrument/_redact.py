"""What never reaches a log line: values under secret-looking names, and secrets inside text.

One rule decides which names are secret (``is_secret_key``), for a field, a
mapping key, a header given as a pair and a query parameter alike. Text
(messages, string fields, exception messages and tracebacks) is scrubbed of
``name=value`` pairs with such names, quoted ``'name': 'value'`` pairs,
``Bearer``/``Basic`` credentials and provider key shapes (``sk-...``,
``sk-ant-...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Matched as substrings of the lower-cased name, ``-`` and ``.`` read as ``_``.
_MARKERS = ("api_key", "apikey", "authorization", "token", "secret", "password", "passwd",
            "cookie", "credential", "session", "private_key", "privatekey", "bearer",
            "signature", "x_api_key")
# Matched as whole ``_``-separated words (``auth`` but not ``author``).
_WORDS = frozenset({"auth", "key", "sig", "pwd", "pass", "jwt"})
# Fields that look secret-ish but are counts or IDs we emit ourselves.
_SAFE = frozenset({"input_tokens", "output_tokens", "cached_input_tokens", "total_tokens",
                   "tokens", "max_tokens", "trace_id", "span_id", "session_count"})
# Past this depth a structure is written as [REDACTED], never raw.
MAX_DEPTH = 8
_MAX_CACHED = 4096

_SCALARS = frozenset({int, float, bool, type(None)})
_cache: dict[str, bool] = {}


def _classify(key: str) -> bool:
    lowered = key.lower().replace("-", "_").replace(".", "_")
    if lowered in _SAFE:
        return False
    # "tokens" (plural) names a count such as prompt_tokens, never a credential.
    lowered = lowered.replace("tokens", "")
    if any(marker in lowered for marker in _MARKERS):
        return True
    return any(word in _WORDS for word in lowered.split("_"))


def is_secret_key(key: object) -> bool:
    """Whether values under this name are redacted (a ``bytes`` name is read as latin-1)."""
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    if not isinstance(key, str):
        return False
    found = _cache.get(key)
    if found is None:
        found = _classify(key)
        if len(_cache) < _MAX_CACHED:  # names can come from callers: bounded
            _cache[key] = found
    return found


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret values replaced: under secret keys of mappings, as the
    second item of ``(name, value)`` pairs (headers as lists, ASGI's byte pairs), inside
    text; a structure nested deeper than ``MAX_DEPTH`` becomes ``[REDACTED]`` whole."""
    kind = type(value)
    if kind is str:
        return scrub(value)
    if kind in _SCALARS:
        return value
    if _depth >= MAX_DEPTH:
        return REDACTED
    depth = _depth + 1
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(k) else redact(v, depth)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value[0], (str, bytes)) and is_secret_key(value[0]):
            return [redact(value[0], depth), REDACTED]
        return [redact(v, depth) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return scrub(bytes(value).decode("latin-1"))
    if kind in (set, frozenset):
        return [redact(v, depth) for v in value]
    # Anything else is written as its str(): scrub that, for objects that print secrets.
    try:
        return scrub(str(value))
    except Exception:
        return f"<unprintable {kind.__name__}>"


# -- text ------------------------------------------------------------------------------------

_NAME = r"[A-Za-z0-9_.\-]{1,64}"
_VALUE = r"(?:(?:Bearer|Basic)\s+)?[^\s&#;,'\"<>()\[\]{}]+"
# a quoted string as a repr or JSON writes it, to its closing quote (escapes included)
_QUOTED = r"'(?:\\.|[^'\\\n])*'" + r'|"(?:\\.|[^"\\\n])*"'
_TEXT = re.compile(
    # a provider key shape anywhere: OpenAI's sk-..., sk-proj-..., Anthropic's sk-ant-...
    r"(?P<key>\bsk-[A-Za-z0-9_\-]{8,})"
    # an HTTP credential: Authorization: Bearer <token>
    r"|(?P<scheme>\b(?:[Bb]earer|BEARER|[Bb]asic|BASIC)\s+)[A-Za-z0-9._~+/\-]{8,}=*"
    # a header pair's repr, str or bytes: ('x-api-key', '...'), (b'cookie', b'...')
    rf"|\(\s*b?(?P<pq>['\"])(?P<pname>{_NAME})(?P=pq)\s*,\s*b?(?P<pvalue>{_QUOTED})"
    # 'name': 'value' with a quoted value (reprs, JSON): redacted to its closing quote
    rf"|(?<![A-Za-z0-9_.\-])(?P<qname>{_NAME})['\"]\s*:\s*(?P<qvalue>{_QUOTED})"
    # name=value (query strings, key=value prose) and 'name': 'value' (reprs, JSON)
    rf"|(?<![A-Za-z0-9_.\-])(?P<name>{_NAME})(?P<sep>=|(?P<q>['\"])\s*:\s*(?P=q)?)"
    rf"(?P<value>{_VALUE})"
)


def _replace(match: re.Match[str]) -> str:
    if match["key"] is not None:
        return REDACTED
    if match["scheme"] is not None:
        return match["scheme"] + REDACTED
    for name, value in (("pname", "pvalue"), ("qname", "qvalue")):
        if match[name] is not None:  # a quoted value: all of it, or what is secret inside it
            quoted = match[value]
            inner = REDACTED if is_secret_key(match[name]) else scrub(quoted[1:-1])
            start = match.start(value) - match.start()
            return match.group(0)[:start] + quoted[0] + inner + quoted[0]
    if is_secret_key(match["name"]):
        return match["name"] + match["sep"] + REDACTED
    return match.group(0)


def needs_scrub(text: str) -> bool:
    """A quick look for anything ``scrub`` would replace (most lines have none)."""
    return ("=" in text or "sk-" in text or "earer " in text or "asic " in text
            or "':" in text or '":' in text or "EARER " in text or "ASIC " in text
            or "', " in text or '", ' in text)


def scrub(text: str) -> str:
    """``text`` with secret query parameters, credentials and key shapes replaced."""
    if not needs_scrub(text):
        return text
    return _TEXT.sub(_replace, text)
