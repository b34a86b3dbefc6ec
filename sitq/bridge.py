"""The one bridge from plain (blocking) code to sitq's async core.

A :class:`LoopThread` is an event loop on a dedicated daemon thread. Each
:class:`~sitq.SyncTaskQueue` owns one; everything blocking built on that queue
(its methods, :class:`~sitq.batch.SyncBatchProcessor`, a pipeline executed
on it) runs its coroutines there, so the async objects they share (the
TaskQueue, its backend's connections) only ever see that one loop.

Why a loop thread of our own rather than ``anyio.from_thread.start_blocking_portal``:
a round trip through the portal costs about 80 µs more than
``run_coroutine_threadsafe`` (measured on this project's small VM: 300 against
220 µs per call), and the portal offers nothing more that sitq uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from sitq.backends.base import run_to_end
from sitq.errors import NotConnected

T = TypeVar("T")

logger = logging.getLogger("sitq.bridge")


class RunOnLoop(Protocol):
    """Something that runs a coroutine to its end and returns its result (blocking)."""

    def __call__(self, coro: Coroutine[Any, Any, T], /) -> T: ...


def in_notebook() -> bool:
    """True in a Jupyter/IPython kernel: its cells run on the kernel's event loop,
    and a plain call in a cell blocks that loop whatever it does."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and "ZMQ" in type(shell).__name__


def runs_event_loop() -> bool:
    """True if the calling thread runs an event loop that blocking would stall
    (a Jupyter kernel's loop excepted: a cell blocks it whatever it does)."""
    return asyncio._get_running_loop() is not None and not in_notebook()


#: How long :meth:`LoopThread.close` gives its clean-up, then what still runs once
#: cancelled, before it leaves the loop to its daemon thread.
CLOSE_GRACE = 5.0


class LoopThread:
    """An event loop running on a dedicated daemon thread, until :meth:`close`.

    :meth:`run` blocks the calling thread until a coroutine has run to its end
    there. Its exception is raised unchanged (same object, same traceback).
    If the wait is interrupted (KeyboardInterrupt), the coroutine is cancelled
    and given the time to unwind, as ``asyncio.run`` does, before the
    interruption propagates; interrupting again stops that wait too.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._closed = False
        # The outcomes callers wait for: close() answers those the loop leaves.
        self._pending: set[Future[Any]] = set()

    def run(self, coro: Coroutine[Any, Any, T], /) -> T:
        """Run ``coro`` on the loop thread; return its result or raise its exception."""
        outcome, launch, stop = self._prepare(coro)
        try:
            # Launched inside the try: an interruption that lands just after the
            # coroutine started still stops it.
            launch()
            return outcome.result()
        except BaseException:
            if not outcome.done():  # interrupted while waiting: stop the coroutine
                stop()
                # Wait for it to unwind (what it ends with is dropped: the
                # interruption propagates). futures.wait() would miss a cancel.
                with contextlib.suppress(futures.CancelledError):
                    outcome.exception()
            raise

    def submit(self, coro: Coroutine[Any, Any, T], /) -> Future[T]:
        """Schedule ``coro`` on the loop thread without waiting: for a caller on
        another event loop, which awaits the future (``asyncio.wrap_future``).
        Cancelling the future cancels the coroutine."""
        outcome, launch, _ = self._prepare(coro)
        launch()
        return outcome

    def _prepare(
        self, coro: Coroutine[Any, Any, T]
    ) -> tuple[Future[T], Callable[[], None], Callable[[], None]]:
        """Ready ``coro`` for the loop: its outcome, what starts it, what stops it."""
        if self._closed:
            coro.close()  # never awaited: close it so Python does not warn
            raise NotConnected(f"the {self._thread.name} event loop is closed")
        outcome: Future[T] = Future()
        # The coroutine sees the caller's context variables (a current trace span),
        # as under asyncio.run: the task is created in a copy of the caller's context.
        context = contextvars.copy_context()
        started: list[asyncio.Task[T]] = []

        def start() -> None:
            if outcome.done():  # given up on (or closed) before it started
                coro.close()
                return
            task = context.run(self._loop.create_task, coro)
            started.append(task)
            task.add_done_callback(functools.partial(_settle, outcome))

        def abort() -> None:
            # The loop runs callbacks in order: start() has run if it was launched.
            if started:
                started[0].cancel()
            else:  # never launched: it never will be
                coro.close()
                outcome.cancel()

        def stop() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                self._loop.call_soon_threadsafe(abort)

        self._pending.add(outcome)
        outcome.add_done_callback(lambda done: stop() if done.cancelled() else None)
        outcome.add_done_callback(self._pending.discard)

        def launch() -> None:
            try:
                self._loop.call_soon_threadsafe(start)
            except RuntimeError:  # another thread closed the loop meanwhile
                coro.close()
                with contextlib.suppress(futures.InvalidStateError):
                    outcome.set_exception(
                        NotConnected(f"the {self._thread.name} event loop is closed")
                    )

        return outcome, launch, stop

    def close(self, last: Coroutine[Any, Any, Any] | None = None, /) -> None:
        """Run ``last`` (a clean-up: closing a backend) if given, then cancel what
        still runs, stop the loop and join its thread. Never hangs: each step has
        ``CLOSE_GRACE`` seconds; a loop still busy after that is left to its daemon
        thread, and every caller still waiting on it gets NotConnected."""
        if self._closed:
            if last is not None:
                last.close()
            return
        try:
            if last is not None:
                with contextlib.suppress(futures.TimeoutError):  # then cancelled below
                    self.submit(last).result(CLOSE_GRACE)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.create_task, self._shut_down())
            self._thread.join(2 * CLOSE_GRACE)
            self._abandon()
            if self._thread.is_alive():
                logger.warning("the %s event loop is stuck: left running", self._thread.name)
            else:
                self._loop.close()

    async def _shut_down(self) -> None:
        """Answer the waiting callers, cancel every task and stop the loop."""
        self._abandon()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE)
        self._loop.stop()

    def _abandon(self) -> None:
        """Every caller still waiting gets NotConnected (its call is being cancelled)."""
        for outcome in list(self._pending):
            error = NotConnected(f"the {self._thread.name} event loop closed during this call")
            with contextlib.suppress(futures.InvalidStateError):
                outcome.set_exception(error)


def _settle(outcome: Future[T], task: asyncio.Task[T]) -> None:
    """Hand a finished task's outcome (the very exception object) to the waiting
    thread, unless it was answered already (by close)."""
    with contextlib.suppress(futures.InvalidStateError):
        if task.cancelled():
            outcome.cancel()
        elif (error := task.exception()) is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(task.result())


def run_inline(coro: Coroutine[Any, Any, T], /) -> T:
    """Run ``coro`` to its end on the calling thread, without an event loop: for
    coroutines that never suspend (sitq's writes on a blocking driver's connection,
    ``SyncTaskQueue.using``), so plain code keeps its connection on its own thread.
    One that does suspend is closed, and a RuntimeError says so."""
    return run_to_end(
        coro,
        "a blocking call waited for an event loop: this connection's driver is not a "
        "blocking one (use TaskQueue.using from async code)",
    )
