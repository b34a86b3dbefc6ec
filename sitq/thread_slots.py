"""Long-lived threads that run plain (sync) task functions for a Worker.

Each thread takes calls from one shared queue, runs them, serializes the return
value itself (keeping that work off the event loop), and hands the outcome back
to the loop in batches: one wake-up of the loop per burst of completions, not
one future per task. A thread stuck in a task that timed out cannot be stopped;
``replace_one`` starts a fresh thread so the pool keeps its size, and the next
thread to finish a call retires in its place.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from sitq.calls import Reply, call_function
from sitq.serialization import Serializer

_numbers = itertools.count(1)


class ThreadSlots:
    """``size`` threads named ``sitq-task-N``; ``on_done(token, reply)`` runs on the loop."""

    def __init__(
        self,
        size: int,
        serializer: Serializer,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[Any, Reply], None],
    ) -> None:
        self._serializer = serializer
        self._loop = loop
        self._on_done = on_done
        self._calls: queue.SimpleQueue[tuple[Any, Callable[..., Any], tuple, dict] | None] = (
            queue.SimpleQueue()
        )
        self._replies: deque[tuple[Any, Reply]] = deque()
        self._signalled = False
        self._lock = threading.Lock()
        self._to_retire = 0
        self._threads: set[threading.Thread] = set()
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"sitq-task-{next(_numbers)}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def submit(self, token: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        """Run ``fn(*args, **kwargs)`` on a free thread; ``on_done(token, reply)`` follows."""
        self._calls.put((token, fn, args, kwargs))

    def replace_one(self) -> None:
        """A thread is stuck in an abandoned call: add one, and retire one later."""
        with self._lock:
            self._to_retire += 1
        self._start_thread()

    def close(self) -> None:
        """Let every thread exit once it is idle (stuck ones finish their call first)."""
        for _ in range(len(self._threads)):
            self._calls.put(None)

    def _work(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                break
            token, fn, args, kwargs = item
            reply = call_function(self._serializer, fn, args, kwargs)
            self._replies.append((token, reply))
            if not self._signalled:
                self._signalled = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:
                    break  # the loop is closed: the worker is gone
            with self._lock:
                if self._to_retire:
                    self._to_retire -= 1
                    break
        self._threads.discard(threading.current_thread())

    def _deliver(self) -> None:
        # Clear the flag before draining, so a reply appended after the drain
        # schedules another delivery.
        self._signalled = False
        while self._replies:
            token, reply = self._replies.popleft()
            self._on_done(token, reply)
