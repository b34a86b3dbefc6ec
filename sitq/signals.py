"""Typed events that application code can hook into.

Each signal is a module-level :class:`Signal` carrying one event type::

    from sitq.signals import task_failed

    @task_failed.connect
    def alert(event: TaskEvent) -> None:
        print(f"{event.task_name} failed: {event.error}")

Signals fire in the process where the thing happens: ``task_enqueued`` in the
producer, the ``task_*`` execution signals and ``worker_*`` signals in the
worker process (so connect receivers in a module the worker imports with
``sitq worker --import``). ``task_cancelled`` fires in the producer whose
``cancel()`` took effect and in the worker that stopped a running task;
``task_requeued`` in the process whose retry queued a task again (``sitq retry``
and the dashboard's Retry included: they go through ``TaskQueue``).

Receivers may be plain functions or coroutine functions. A receiver that
raises is logged and skipped: it never breaks the worker, the enqueue or the
recording of a result. Sending costs one attribute check when nothing is
connected.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "Receiver",
    "Signal",
    "TaskEvent",
    "WorkerEvent",
    "task_cancelled",
    "task_completed",
    "task_enqueued",
    "task_failed",
    "task_requeued",
    "task_retrying",
    "task_started",
    "worker_started",
    "worker_stopping",
]

logger = logging.getLogger("sitq.signals")

E = TypeVar("E")
Receiver = Callable[[E], "Awaitable[None] | None"]


@dataclass(frozen=True)
class TaskEvent:
    """What happened to one task.

    Which fields are set depends on the signal: ``value`` on completion,
    ``error`` and ``traceback`` on failure and retry, ``retry_at`` (epoch
    seconds) on retry, ``duration`` (seconds of run time) once a run ended.
    """

    task_id: str
    task_name: str
    queue: str
    attempt: int = 0
    worker_id: str | None = None
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    retry_at: float | None = None
    duration: float | None = None


@dataclass(frozen=True)
class WorkerEvent:
    """A worker starting or stopping."""

    worker_id: str
    queues: tuple[str, ...]
    concurrency: int


class Signal(Generic[E]):
    """One named event with any number of receivers.

    ``connect`` works as a decorator and returns the receiver unchanged.
    Receivers are called in the order they were connected.
    """

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc or f"The {name} signal."
        self._receivers: list[Receiver[E]] = []

    def __repr__(self) -> str:
        return f"<Signal {self.name} receivers={len(self._receivers)}>"

    @property
    def has_receivers(self) -> bool:
        """True when at least one receiver is connected."""
        return bool(self._receivers)

    def connect(self, receiver: Receiver[E]) -> Receiver[E]:
        """Call ``receiver(event)`` each time this signal fires."""
        if not callable(receiver):
            raise TypeError(f"{self.name}.connect() needs a callable, got {receiver!r}")
        if receiver not in self._receivers:
            self._receivers.append(receiver)
            _connected[0] += 1
        return receiver

    def disconnect(self, receiver: Receiver[E]) -> bool:
        """Stop calling ``receiver``; returns whether it was connected."""
        try:
            self._receivers.remove(receiver)
        except ValueError:
            return False
        _connected[0] -= 1
        return True

    async def send(self, event: E) -> None:
        """Call every receiver, awaiting the async ones; errors are logged."""
        for receiver in tuple(self._receivers):
            try:
                outcome = receiver(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("receiver %r of signal %s raised", receiver, self.name)

    def send_nowait(self, event: E) -> None:
        """Fire from synchronous code.

        Sync receivers run now. Async receivers are scheduled on the running
        event loop if there is one, else run to completion here.
        """
        for receiver in tuple(self._receivers):
            try:
                outcome = receiver(event)
                if inspect.isawaitable(outcome):
                    _finish_later(outcome, receiver, self.name)
            except Exception:
                logger.exception("receiver %r of signal %s raised", receiver, self.name)


_pending: set[asyncio.Future[Any]] = set()
#: Receivers connected to any signal: one check tells hot paths nobody listens.
_connected = [0]


def any_connected() -> bool:
    """True when any signal has a receiver."""
    return _connected[0] > 0


def _finish_later(awaitable: Awaitable[Any], receiver: Any, name: str) -> None:
    async def guarded() -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("receiver %r of signal %s raised", receiver, name)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(guarded())
        return
    future = loop.create_task(guarded())
    _pending.add(future)  # keep a reference until it is done
    future.add_done_callback(_pending.discard)


task_enqueued: Signal[TaskEvent] = Signal("task_enqueued", "A task was committed to the queue.")
task_started: Signal[TaskEvent] = Signal("task_started", "A worker began an attempt of a task.")
task_completed: Signal[TaskEvent] = Signal("task_completed", "A task succeeded; see event.value.")
task_failed: Signal[TaskEvent] = Signal(
    "task_failed", "A task ended FAILED (no retries left); event.error and traceback are set."
)
task_retrying: Signal[TaskEvent] = Signal(
    "task_retrying", "An attempt failed and the task will run again at event.retry_at."
)
task_cancelled: Signal[TaskEvent] = Signal("task_cancelled", "A task was cancelled.")
task_requeued: Signal[TaskEvent] = Signal(
    "task_requeued", "A failed or cancelled task was queued again by a retry."
)
worker_started: Signal[WorkerEvent] = Signal("worker_started", "A worker is serving its queues.")
worker_stopping: Signal[WorkerEvent] = Signal(
    "worker_stopping", "A worker began its shutdown (draining what runs)."
)
