"""Flask with the Flask adapter: a provider call, a streamed SSE route and /metrics.

    python examples/flask_app.py        # then, in another shell:
    curl 'localhost:5000/ask?q=hello'
    curl -N 'localhost:5000/stream?q=hello'
    curl localhost:5000/metrics/summary

The "LLM" is a local fake, so no key or network is needed. PORT overrides the
port. examples/gunicorn_multiprocess/ serves this same app with several workers.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

from instrument import configure_logging, get_trace_id, load_prices, track_provider, track_sse
from instrument.adapters.flask import instrument_app

configure_logging("INFO")  # JSON lines on stderr, each with the request's trace ID
load_prices({"local/tiny-1": {"input": 0.20, "cached_input": 0.05, "output": 0.80}})

app = Flask(__name__)
instrument_app(app)  # trace IDs in and out, request metrics, access log, /metrics routes


def _answer(prompt: str) -> list[str]:
    return f"You asked about {prompt}; here is a short answer.".split()


@track_provider("local", "tiny-1")
def complete(prompt: str) -> dict[str, Any]:
    """A fake SDK call; the decorator reads ``usage`` from what it returns."""
    time.sleep(random.uniform(0.01, 0.05))
    words = _answer(prompt)
    return {"choices": [{"message": {"content": " ".join(words)}}],
            "usage": {"prompt_tokens": 12 + len(prompt.split()), "completion_tokens": len(words)}}


@track_provider("local", "tiny-1")
def stream_completion(prompt: str) -> Iterator[dict[str, Any]]:
    """A fake streaming SDK call: text chunks, then a final chunk with the usage."""
    words = _answer(prompt)
    time.sleep(random.uniform(0.02, 0.06))  # time to first token
    for word in words:
        yield {"choices": [{"delta": {"content": word + " "}}]}
        time.sleep(0.005)
    yield {"choices": [], "usage": {"prompt_tokens": 12 + len(prompt.split()),
                                    "completion_tokens": len(words)}}


@track_sse("/stream")
def token_events(prompt: str) -> Iterator[str]:
    yield ": thinking\n\n"  # an SSE comment: counted as a heartbeat, not an event
    for chunk in stream_completion(prompt):
        for choice in chunk["choices"]:
            yield f"data: {choice['delta']['content']}\n\n"
    yield "event: done\ndata: {}\n\n"


@app.get("/ask")
def ask() -> Any:
    reply = complete(request.args.get("q", "nothing"))
    return jsonify(answer=reply["choices"][0]["message"]["content"], trace_id=get_trace_id(),
                   worker_pid=os.getpid())


@app.get("/stream")
def stream() -> Response:
    return Response(token_events(request.args.get("q", "nothing")),
                    mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
