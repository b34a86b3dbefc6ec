"""One run of a task in a Worker: what the worker holds for it (``Running``,
shared by every part of the worker), how an awaitable run is timed out, and how
its end is logged and announced."""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass
from types import FunctionType
from typing import Any

from opentelemetry import trace

from sitq import signals, telemetry
from sitq.backends.base import ClaimedTask, Outcome, ProgressReport
from sitq.current import CurrentTask, Report
from sitq.display import redact, terminal_safe

# The whole worker logs as "sitq.worker" (operators filter on that name).
logger = logging.getLogger("sitq.worker")


class TimedOut(Exception):
    """A run exceeded its task's timeout (distinct from a TimeoutError the task raised)."""


class _Raised(Exception):
    """Carries a BaseException a task raised out of the asyncio Task that ran it."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


async def _contained(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable``, turning its SystemExit or KeyboardInterrupt into _Raised.

    An asyncio Task re-raises those two out of the event loop itself, which would
    end the worker's loop: a task's exceptions must fail that task only.
    """
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Raised(exc) from None


async def with_timeout(awaitable: Awaitable[Any], timeout: float | None) -> Any:
    """Await ``awaitable``; after ``timeout`` seconds cancel it and raise TimedOut.
    A BaseException the task raises comes back as itself, never through the loop."""
    if timeout is None:
        return await awaitable
    future = asyncio.ensure_future(_contained(awaitable))
    try:
        done, _ = await asyncio.wait([future], timeout=timeout)
    except asyncio.CancelledError:
        future.cancel()
        raise
    if done:
        try:
            return future.result()
        except _Raised as raised:
            raise raised.exc from None
    future.cancel()
    await asyncio.wait([future], timeout=1.0)  # let it clean up, briefly
    raise TimedOut()


@dataclass(eq=False)
class Running:
    """A task this worker holds, and how it is being run."""

    task: ClaimedTask
    runner: asyncio.Task[None] | None = None  # an async or process-pool run
    in_thread: bool = False  # a sync run on a ThreadSlots thread
    timer: asyncio.TimerHandle | None = None  # a thread run's timeout
    interrupt: str | None = None  # "cancel" or "shutdown" once asked to stop
    done: bool = False  # its outcome is decided (the thread may still run on)
    started: float = 0.0  # time.monotonic() when it began to run
    started_at: float | None = None  # the same on the backend's clock
    span: trace.Span | None = None  # its CONSUMER span, when tracing is on
    outcome: Outcome | None = None  # as decided, kept for the signals once recorded
    run_time: float = 0.0  # seconds it ran
    observed: bool = False  # someone listens: spans, metrics, signals
    claimed_at: float = 0.0  # time.monotonic() just before the claim that took it
    start_recorded: bool = False  # its start is stored (see Backend.record_start)
    current: CurrentTask | None = None  # what sitq.current_task() returns in its run
    flushed: Report | None = None  # the latest report handed to the writer

    def unflushed(self) -> ProgressReport | None:
        """Its latest progress report if not yet handed to the writer (marked handed)."""
        current = self.current
        if current is None:
            return None
        latest = current.latest
        if latest is None or latest is self.flushed:
            return None
        self.flushed = latest
        return ProgressReport(self.task.lease, *latest)


def observed() -> bool:
    """True when anyone listens to runs: tracing, metrics or a signal receiver."""
    return signals.any_connected() or telemetry.tracing_on() or telemetry.metrics_on()


def outcome_name(outcome: Outcome | None) -> str:
    """How an outcome is counted: succeeded, failed, cancelled, retried, or
    released (None: the task went back to the queue)."""
    if outcome is None:
        return "released"
    return "retried" if outcome.status == "queued" else outcome.status


#: The most characters of a task's error a failure log line shows.
_LOGGED_ERROR_LIMIT = 300


def log_failure(task: ClaimedTask, outcome: Outcome, now: float) -> None:
    """One line per stored failure: WARNING when the task failed for good, INFO
    when a retry is scheduled; a cancellation is not a failure and is not logged.
    The error is stored text: its first line, bounded, without control characters
    or database passwords (a worker embedded in an app may log to a terminal)."""
    if outcome.status == "cancelled":
        return
    error = (outcome.error or "unknown error").strip().split("\n", 1)[0]
    if len(error) > _LOGGED_ERROR_LIMIT:
        error = error[:_LOGGED_ERROR_LIMIT] + "..."
    line = (
        f"task {task.id} ({terminal_safe(task.func_name)}) failed on attempt "
        f"{task.attempts}/{task.max_retries + 1}: {terminal_safe(redact(error))}"
    )
    if outcome.retry_at is None:
        logger.warning("%s", line)
    else:
        logger.info("%s; retry in %.1f s", line, max(outcome.retry_at - now, 0.0))


def end_run(running: Running, outcome: Outcome | None, elapsed: float) -> None:
    """Close the run's span and count it in the metrics (when someone listens)."""
    task = running.task
    telemetry.end_run(
        running.span,
        task.queue,
        task.func_name,
        outcome_name(outcome),
        elapsed,
        None if outcome is None else outcome.error,
        None if outcome is None else outcome.traceback,
    )
    running.span = None


#: The signal each recorded outcome fires, by ``outcome_name``.
OUTCOME_SIGNALS = {
    "succeeded": signals.task_completed,
    "failed": signals.task_failed,
    "retried": signals.task_retrying,
    "cancelled": signals.task_cancelled,
}


def is_async(fn: object) -> bool:
    """True for coroutine functions and objects with an async ``__call__``."""
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & inspect.CO_COROUTINE:
        return True  # the common case, without inspect's unwrapping
    if type(fn) is FunctionType:
        # A plain function: async only if marked so (inspect.markcoroutinefunction).
        return getattr(fn, "_is_coroutine_marker", None) is not None
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(call)


def format_tb(exc: BaseException) -> str:
    """The traceback of ``exc`` as stored with a failed task."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
