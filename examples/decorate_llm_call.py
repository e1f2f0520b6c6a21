"""The smallest use: decorate a sync and an async LLM call, serve /metrics on port 8000.

    python examples/decorate_llm_call.py          # then: curl localhost:8000/metrics/summary

The "LLM client" here is a fake that answers locally, so no key or network is
needed. PORT and DEMO_SECONDS override the port and how long it runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from instrument import configure_logging, start_http_server, trace_span, track_provider


class FakeClient:
    """Answers like an OpenAI-style SDK: an object with ``usage``."""

    def complete(self, prompt: str, model: str) -> dict[str, Any]:
        time.sleep(random.uniform(0.01, 0.05))
        if random.random() < 0.1:
            raise TimeoutError("upstream timed out")
        words = len(prompt.split())
        return {"choices": [{"text": f"echo: {prompt}"}],
                "usage": {"prompt_tokens": 20 + words, "completion_tokens": 10 + words}}


client = FakeClient()


@track_provider("openai")
def ask(prompt: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return client.complete(prompt, model)


@track_provider("openai", "gpt-4o")
async def ask_async(prompt: str) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0.02, 0.08))
    return {"usage": {"prompt_tokens": 50, "completion_tokens": 25,
                      "prompt_tokens_details": {"cached_tokens": 32}}}


def main() -> None:
    configure_logging("INFO")
    port = int(os.environ.get("PORT", "8000"))
    server = start_http_server(port)
    print(f"metrics on http://localhost:{server.port}/metrics "
          f"(and /metrics/summary, /metrics/health)", flush=True)
    deadline = time.monotonic() + float(os.environ.get("DEMO_SECONDS", "inf"))
    try:
        while time.monotonic() < deadline:
            with trace_span("handle_question"):
                try:
                    ask("what is observability?", model="gpt-4o-mini")
                except TimeoutError:
                    pass
                asyncio.run(ask_async("and tracing?"))
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
