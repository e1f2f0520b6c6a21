"""A bounded hand-off of finished log lines to a writer thread, so log I/O never stalls a caller.

loguru's own ``enqueue=True`` pickles every record in the caller and queues
without bound: a slow sink grows memory until the process dies. Here the
caller hands over the finished line (a str, nothing to pickle) and, when
``size`` lines are already waiting, drops it and counts the drop instead.
"""

from __future__ import annotations

import atexit
import threading
from collections import deque
from collections.abc import Callable

# The writer takes what has gathered, up to this many lines, in one write.
_BATCH = 512


class LineQueue:
    """Lines written by one daemon thread, at most ``size`` waiting; ``stop()`` drains."""

    def __init__(self, write: Callable[[str], None], size: int,
                 dropped: Callable[[], None]) -> None:
        self._write = write  # must not raise: the caller guards its sink
        self._size = size
        self._dropped = dropped
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._idle = False
        self._stopping = False
        self._thread = self._start()
        atexit.register(self.stop)

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="instrument-log-writer", daemon=True)
        thread.start()
        return thread

    def after_fork(self) -> None:
        """In a forked child: the parent's writer thread is gone, start this process's own."""
        if not self._stopping:
            self._wake = threading.Event()
            self._thread = self._start()

    def put(self, line: str) -> None:
        """Queue one line, or count it dropped when the queue is full (never blocks)."""
        lines = self._lines
        # read without a lock: with several callers the queue may overshoot by one line each
        if len(lines) >= self._size:
            self._dropped()
            return
        lines.append(line)
        if self._idle:
            self._wake.set()

    def _run(self) -> None:
        lines = self._lines
        while True:
            while lines:
                batch: list[str] = []
                try:
                    while len(batch) < _BATCH:
                        batch.append(lines.popleft())
                except IndexError:
                    pass
                self._write("".join(batch))
            if self._stopping:
                return
            self._idle = True
            if not lines:  # looked at after _idle is set: a put() in between wakes us
                self._wake.wait(1.0)
            self._wake.clear()
            self._idle = False

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is waiting (within ``timeout``) and end the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        atexit.unregister(self.stop)
