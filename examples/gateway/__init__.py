"""An instrumented LLM search gateway: run it all with ``python -m examples.gateway.demo``.

fake_llm    a local OpenAI-compatible server: streamed tokens, usage, failures, timeouts
providers   two providers through the real openai SDK, with fallback, over an instrumented httpx
cache       an in-memory TTL cache behind ``@track_cache``
app         the FastAPI gateway: ``GET /search`` (SSE), ``POST /chat``, ``GET /healthz``
traffic     a traffic generator: concurrent searches, repeats, impatient clients, chats
demo        one process running all of the above, with a live summary in the terminal
"""
