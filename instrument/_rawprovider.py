"""Raw HTTP calls to a known provider host, observed as provider calls.

Client adapters (httpx's ``providers={"api.openai.com": "openai"}``) hand the
request body and the response bytes to this observer; it reads the model
from the JSON request, usage from the JSON response or from the last SSE
chunk that carries it, and records everything ``@track_provider`` records.
"""

from __future__ import annotations

import json
from time import perf_counter

from instrument import _metrics
from instrument._engine import CLOSED, ERROR, OK, outcome_for
from instrument._provider import UNKNOWN_MODEL, Found, ProviderCall, read_usage

_MAX_BODY = 1 << 20  # never parse request bodies above 1 MiB just to find the model
_TAIL = 1 << 15  # usage arrives in the last chunk of a stream: keep the last 32 KiB
_HEAD = 1 << 13  # ...and, for Anthropic, the input in the first event: keep the first 8 KiB
# the last event of a complete stream: OpenAI chat, Anthropic messages, OpenAI responses
_STREAM_ENDS = (b"[DONE]", b"message_stop", b"response.completed")


class ProviderHTTPError(Exception):
    """A provider answered with an HTTP error status (labelled ``http_<status>``)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"provider answered HTTP {status}")
        self.error_type = f"http_{status}"


def model_from_request(body: bytes | None) -> str:
    if not body or len(body) > _MAX_BODY or not body.lstrip().startswith(b"{"):
        return UNKNOWN_MODEL
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return UNKNOWN_MODEL
    return model if isinstance(model, str) and model else UNKNOWN_MODEL


def usage_from_response(data: bytes) -> Found | None:
    """Usage from a JSON body, or from the ``data:`` lines of an SSE body that carry one.

    Stream events are cumulative and may split the figures (Anthropic's
    ``message_start`` has the input, ``message_delta`` the output), so they are
    merged in order, the latest non-zero figure of each kind winning.
    """
    text = data.strip()
    if not text:
        return None
    if text.startswith(b"{"):
        try:
            return read_usage(json.loads(text))
        except ValueError:
            return None
    merged: list[int] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                found = read_usage(json.loads(line[5:]))
            except ValueError:
                continue
            if found is not None:
                merged = [new or old for new, old in zip(found, merged or found, strict=True)]
    return None if merged is None else (merged[0], merged[1], merged[2], merged[3], merged[4],
                                        merged[5])


class RawProviderCall:
    """Observer for one raw HTTP provider call: ``first_chunk``, ``chunk``, ``finish``."""

    __slots__ = ("call", "first_at", "head", "seen", "streaming", "tail")

    def __init__(self, provider: str, request_body: bytes | None,
                 metrics: _metrics.Metrics | None = None) -> None:
        self.call = ProviderCall(metrics or _metrics.current(), provider,
                                 model_from_request(request_body), "http", False, None)
        self.tail = bytearray()
        self.head = bytearray()
        self.seen = 0
        self.first_at = 0.0
        self.streaming = False

    def first_chunk(self) -> None:
        self.first_at = perf_counter()

    def chunk(self, data: bytes) -> None:
        if not self.streaming and data.lstrip().startswith((b"data:", b"event:", b":")):
            self.streaming = True
        if self.seen < _HEAD:
            self.head += data[:_HEAD - self.seen]
        self.seen += len(data)
        self.tail += data
        if len(self.tail) > _TAIL:
            del self.tail[:-_TAIL]

    def finish(self, status: int | None, exc: BaseException | None, body: bytes | None,
               abandoned: bool = False) -> None:
        """``abandoned``: the reader closed the response before its body's end; a stream
        whose last event had arrived (an SDK stops reading there) is complete all the same.
        """
        call = self.call
        if body is None:  # the head too, when the tail no longer holds it
            body = bytes(self.tail if self.seen <= _TAIL else self.head + b"\n\n" + self.tail)
        found = usage_from_response(body)
        if found is not None:
            call._merge(found)
        if self.streaming:  # time to first token only means something for a stream
            call.first_at = self.first_at
        if exc is not None:
            call.finish(outcome_for(exc), exc)
        elif status is not None and status >= 400:
            call.finish(ERROR, ProviderHTTPError(status))
        elif abandoned and not any(end in self.tail for end in _STREAM_ENDS):
            call.finish(CLOSED, None)
        else:
            call.finish(OK, None)
