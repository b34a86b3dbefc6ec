"""``sitq.current_task()``: the running task, seen from inside its own code.

A worker sets the :class:`CurrentTask` of each run before calling the task's
function: in the run's own asyncio Task (an async function on the worker's
loop), in the task thread (a plain function), or in the child process (the
process pool). Reporting progress only keeps the latest value in memory (a few
hundred nanoseconds, so a tight loop may report every item); the worker stores
the latest report of every task it runs in one write at most every
``FLUSH_INTERVAL`` seconds, and the last one when the task ends.
"""

from __future__ import annotations

import contextvars
import math
from typing import Any, Protocol

from sitq.errors import ConfigurationError

#: How often a worker stores the latest progress of the tasks it runs (seconds).
FLUSH_INTERVAL = 0.5

#: (done, total, message): the latest report, as a worker reads it.
Report = tuple[float, float | None, str | None]


class CancelFlag(Protocol):
    """A flag shared with another process (``multiprocessing.Value``): nonzero once set."""

    value: Any


class CurrentTask:
    """The task running in this context: its id, attempt (1 for the first run)
    and queue, ``report_progress``, and ``cancel_requested``.

    Get it with :func:`sitq.current_task` inside a task; a worker makes it.
    """

    __slots__ = ("_cancelled", "_flag", "attempt", "latest", "queue", "task_id")

    def __init__(self, task_id: str, attempt: int, queue: str) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.queue = queue
        #: The latest report (None before any): the worker reads it, no lock needed
        #: (one attribute assignment is atomic).
        self.latest: Report | None = None
        self._cancelled = False
        self._flag: CancelFlag | None = None  # the process pool's shared flag

    def report_progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Record how far the task has come: ``done`` of ``total`` (None: unknown),
        with an optional ``message``. Cheap: only the latest value is kept, and the
        worker stores it within about half a second (and when the task ends), so
        calling it on every item of a tight loop is fine.

        ``done`` and ``total`` are numbers >= 0 (ints or finite floats); ``message``
        a str (stored up to 1,000 characters). Anything else raises ConfigurationError.
        """
        # The common calls (ints, a str or nothing) pass these few checks only.
        if (
            type(done) is int
            and done >= 0
            and (total is None or (type(total) is int and total >= 0))
            and (message is None or type(message) is str)
        ):
            self.latest = (done, total, message)
            return
        self.latest = _checked(done, total, message)

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this run (``queue.cancel``, ``sitq
        cancel``): a cooperative task stops at its next safe point. Its outcome is
        CANCELLED whatever it then returns. (An async task also gets CancelledError
        at its next ``await``; a process-pool child is killed after a grace period.)"""
        if self._cancelled:
            return True
        flag = self._flag
        return flag is not None and bool(flag.value)

    def request_cancel(self) -> None:
        """Set ``cancel_requested`` (the worker calls this when a cancel arrives)."""
        self._cancelled = True
        if self._flag is not None:
            self._flag.value = 1

    def share_cancel(self, flag: CancelFlag | None) -> None:
        """Mirror ``cancel_requested`` in ``flag`` (shared with a process-pool
        child), or stop mirroring (None)."""
        self._flag = flag
        if flag is not None and self._cancelled:
            flag.value = 1

    def __repr__(self) -> str:
        return f"<CurrentTask {self.task_id} attempt {self.attempt} on {self.queue!r}>"


def _checked(done: Any, total: Any, message: Any) -> Report:
    """The report, or a ConfigurationError naming what is wrong with it."""
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(
                f"report_progress: {name} must be a number (int or float), got "
                f"{type(value).__name__} {value!r}"
            )
        if not math.isfinite(value) or value < 0:
            raise ConfigurationError(
                f"report_progress: {name} must be a finite number >= 0, got {value!r}"
            )
    if message is not None and not isinstance(message, str):
        raise ConfigurationError(
            f"report_progress: message must be a str or None, got {type(message).__name__}: "
            "pass str(...) to show a value"
        )
    return (done, total, message)


_current: contextvars.ContextVar[CurrentTask | None] = contextvars.ContextVar(
    "sitq_current_task", default=None
)


def current_task() -> CurrentTask | None:
    """The task running in this context (async, in a task thread, or in a
    process-pool child), or None outside a task."""
    return _current.get()


def set_current(task: CurrentTask | None) -> contextvars.Token[CurrentTask | None]:
    """Make ``task`` the current task of this context (for the worker); returns
    the token that restores the previous one."""
    return _current.set(task)


def reset_current(token: contextvars.Token[CurrentTask | None]) -> None:
    """Restore the current task that ``set_current`` replaced."""
    _current.reset(token)
