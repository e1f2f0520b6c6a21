"""Carrying the trace context into threads, which never happens by itself.

``contextvars`` follow ``await`` and tasks, but a thread starts with an empty
context: ``ThreadPoolExecutor.submit(fn)`` and ``threading.Thread(target=fn)``
run ``fn`` outside the caller's trace. Use ``wrap``/``submit`` (or
``run_in_thread`` from async code) to take the current trace along.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

import anyio.to_thread

from instrument._context import TraceContext, current, get_span_id, get_trace_id

__all__ = ["TraceContext", "current", "get_span_id", "get_trace_id", "run_in_thread", "submit",
           "wrap"]

P = ParamSpec("P")
R = TypeVar("R")


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to the caller's current context; each call runs in its own copy of it.

    Copying per call lets several threads run the wrapped function at once
    (one ``Context`` object cannot be entered by two threads).
    """
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return run


def submit(executor: Executor, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
    """``executor.submit`` that carries the current trace into the worker thread."""
    ctx = contextvars.copy_context()

    def call() -> R:
        return ctx.run(fn, *args, **kwargs)

    return executor.submit(call)


async def run_in_thread(fn: Callable[..., R], *args: object) -> R:
    """Run a blocking ``fn`` in a worker thread (anyio), inside a copy of the current context."""
    return await anyio.to_thread.run_sync(functools.partial(contextvars.copy_context().run,
                                                            fn, *args))
