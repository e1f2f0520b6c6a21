"""Planted secrets: values that must never reach a log line, a metric label or
``/metrics/summary``, and what the reliability run collects to look for them.

Every value is unique and plain ASCII (letters and digits: no encoder can escape it
into another spelling), so one substring search per value finds any leak. The load
tests send them in their requests' headers and query strings (``common.fire``); the
secrets tests plant them in every other place; ``conftest.py`` collects every line
of the run and ``test_secrets.py::test_zz_no_planted_secret_in_the_whole_run`` (run
last) searches it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# One value per place it is planted (the place is in the name, for the failure message).
PLANTED = {
    "authorization": "PLNTauthz7Q3xK9mW2",
    "bearer": "PLNTbearer4R8vL1nB6",
    "cookie": "PLNTcookie5T2pJ7dH3",
    "set_cookie": "PLNTsetcookie8Y4sF1",
    "x_api_key": "PLNTxapikey3U6gZ9c",
    "api_key_arg": "PLNTapikeyarg2I5hE8",
    "token_field": "PLNTtokenfld7O1kR4",
    "secret_nested": "PLNTsecretnest9A3wQ",
    "password_deep": "PLNTpassworddeep6S2",
    "pair_list": "PLNTpairlist1D8jX5",
    "served_query": "PLNTservedqry4F7mV2",
    "client_query": "PLNTclientqry3G9nC6",
    "sdk_error": "PLNTsdkerror5H1bN8",
    "provider_key": "sk-PLNTproviderkey2J7",
}

#: a value written on purpose where nothing redacts it (free text without a secret's
#: shape, which docs/logging.md says is not redacted): the last test must find it, which
#: proves it searched the other tests' lines, not an empty collection
CANARY = "PLNTcanaryvisible0Z"


def request_headers() -> dict[str, str]:
    """The secret headers every load-test request carries."""
    return {"Authorization": f"Bearer {PLANTED['bearer']}",
            "Cookie": f"session={PLANTED['cookie']}",
            "X-Api-Key": PLANTED["x_api_key"]}


def request_params() -> dict[str, str]:
    """The secret query parameters every load-test request carries."""
    return {"api_key": PLANTED["served_query"]}


@dataclass
class Collected:
    """Everything the reliability run emitted, by the test that emitted it."""

    lines: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: str = "(outside any test)"

    def add(self, text: str, where: str | None = None) -> None:
        with self.lock:
            self.lines.setdefault(where or self.current, []).append(text)

    def leaks(self) -> list[str]:
        """Each planted value found, with the test and the start of the text it was in."""
        found = []
        with self.lock:
            items = [(test, list(texts)) for test, texts in self.lines.items()]
        for test, texts in items:
            for text in texts:
                for place, value in PLANTED.items():
                    if value in text:
                        at = text.index(value)
                        found.append(f"{place} in {test}: ...{text[max(0, at - 150):at + 50]!r}")
        return found

    def total_chars(self) -> int:
        with self.lock:
            return sum(len(t) for texts in self.lines.values() for t in texts)


#: the one collection of the run (filled by conftest.py's fixtures)
COLLECTED = Collected()
