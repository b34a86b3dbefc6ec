"""Long-lived threads that run plain (sync) task functions for a Worker.

Each thread takes calls from one shared queue, runs them, serializes the return
value itself (keeping that work off the event loop), and hands the outcome back
to the loop in batches: one wake-up of the loop per burst of completions, not
one future per task. A stuck thread is replaced (see ``abandon``).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sitq.current import CurrentTask, reset_current, set_current
from sitq.serialization import Binding, Serializer
from sitq.worker.calls import Reply, call_function

_numbers = itertools.count(1)

#: What a caller hands in with a call, and gets back with its reply.
Token = TypeVar("Token")


class ThreadSlots(Generic[Token]):
    """``size`` threads named ``sitq-task-N``; ``on_done(token, reply)`` runs on the loop."""

    def __init__(
        self,
        size: int,
        serializer: Serializer,
        loop: asyncio.AbstractEventLoop,
        on_done: Callable[[Token, Reply], None],
    ) -> None:
        self._serializer = serializer
        self._loop = loop
        self._on_done = on_done
        self._calls: queue.SimpleQueue[
            tuple[
                Token,
                Callable[..., Any],
                tuple[Any, ...],
                dict[str, Any],
                Binding | None,
                CurrentTask | None,
            ]
            | None
        ] = queue.SimpleQueue()
        self._replies: deque[tuple[Token, Reply]] = deque()
        self._signalled = False
        self._lock = threading.Lock()
        self._abandoned: set[int] = set()  # id() of tokens whose thread must retire
        self._threads: set[threading.Thread] = set()
        for _ in range(size):
            self._start_thread()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"sitq-task-{next(_numbers)}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def submit(
        self,
        token: Token,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        binding: Binding | None = None,
        current: CurrentTask | None = None,
    ) -> None:
        """Run ``fn(*args, **kwargs)`` on a free thread; ``on_done(token, reply)`` follows.
        The result is signed for ``binding`` (see :func:`sitq.worker.calls.call_function`);
        ``current`` is what ``sitq.current_task()`` returns in the call."""
        self._calls.put((token, fn, args, kwargs, binding, current))

    def abandon(self, token: Token) -> None:
        """The call for ``token`` is stuck: start a thread in its place now; the
        stuck thread exits when (if ever) that call returns, and its reply is dropped."""
        with self._lock:
            self._abandoned.add(id(token))
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
            token, fn, args, kwargs, binding, current = item
            mark = set_current(current)
            try:
                reply = call_function(self._serializer, fn, args, kwargs, binding)
            finally:
                reset_current(mark)
            with self._lock:
                if id(token) in self._abandoned:
                    self._abandoned.discard(id(token))
                    break  # a replacement already serves in this thread's place
            self._replies.append((token, reply))
            if not self._signalled:
                self._signalled = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:
                    break  # the loop is closed: the worker is gone
        self._threads.discard(threading.current_thread())

    def _deliver(self) -> None:
        # Clear the flag before draining, so a reply appended after the drain
        # schedules another delivery.
        self._signalled = False
        while self._replies:
            token, reply = self._replies.popleft()
            self._on_done(token, reply)
