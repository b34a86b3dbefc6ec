"""The outcome writer: a Worker's outcomes and starts, written in group commits,
and retried while the database is unavailable and the task's lease holds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import replace

from sitq.backends.base import Backend, Outcome, ProgressReport
from sitq.errors import SitqError
from sitq.worker.runs import Running, logger

#: A task still running this many seconds after its start has the start written
#: (it reads as running from then on); a task that ends sooner has its start
#: written with its outcome, so a short task costs no extra write.
START_MARK_DELAY = 0.05
#: The longest pause between tries to write outcomes while the database fails.
RETRY_WRITE_MAX = 1.0


class OutcomeWriter:
    """Writes outcomes in group commits: all that arrive while one write is in
    flight go together in the next, so many finishing tasks cost one transaction.
    ``recorded(running, applied)`` is called for each once it is settled.

    A write that fails because the database is unavailable (unreachable, or
    locked past the backend's patience) is tried again for as long as the
    task's lease holds (``lease_until(running)``, monotonic): giving up earlier
    would run a finished task again. Once the lease has run out another worker
    may run it, and the outcome is given up. Any other failure (the database
    refuses a value) would fail forever, holding every later outcome behind it:
    each outcome of that batch is then written on its own, and one still
    refused is stored as a plain failure instead (see ``_write_each``).

    It also writes starts: with the outcome, or (see ``START_MARK_DELAY``) with
    the next write, one made for it if none is due; and progress reports (see
    ``progress``), each write's before its outcomes, so a task's last report is
    stored while it still runs (a report for a finished task is ignored)."""

    def __init__(
        self,
        backend: Backend,
        recorded: Callable[[Running, bool | None], None],
        lease_until: Callable[[Running], float],
    ) -> None:
        self._backend = backend
        self._recorded = recorded
        self._lease_until = lease_until
        self._pending: list[tuple[Running, Outcome]] = []
        self._unmarked: dict[Running, None] = {}  # started, start not written; in start order
        self._mark_timer: asyncio.TimerHandle | None = None
        # The latest progress report per task, for the next write (best effort).
        self._reports: dict[str, ProgressReport] = {}
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._loop())

    def started(self, running: Running) -> None:
        """``running`` began to run: write its start if it runs long enough."""
        self._unmarked[running] = None
        if self._mark_timer is None:
            self._arm_marks()

    def unmark(self, running: Running) -> None:
        """``running`` ends without an outcome (released): no start to write."""
        self._unmarked.pop(running, None)

    def progress(self, reports: list[ProgressReport]) -> None:
        """Store these progress reports with the next write (one made for them)."""
        for report in reports:
            self._reports[report.lease.task_id] = report
        self._ready.set()

    def submit(self, running: Running, outcome: Outcome) -> None:
        """Queue ``outcome`` for the next write (with the task's start, and its
        last progress report if that is not stored yet)."""
        self._unmarked.pop(running, None)
        if (report := running.unflushed()) is not None:
            self._reports[report.lease.task_id] = report
        if outcome.error is not None:  # failures only: no cost to a success
            outcome = _storable(outcome)
        self._pending.append((running, outcome))
        self._idle.clear()
        self._ready.set()

    def _arm_marks(self) -> None:
        """Wake the writer when the oldest unwritten start is due."""
        if not self._unmarked:
            return
        oldest = next(iter(self._unmarked))
        delay = max(0.0, oldest.started + START_MARK_DELAY - time.monotonic())
        self._mark_timer = asyncio.get_running_loop().call_later(delay, self._marks_due)

    def _marks_due(self) -> None:
        self._mark_timer = None
        if self._unmarked:
            self._ready.set()

    def _take_due_marks(self) -> list[Running]:
        """The tasks that have run for START_MARK_DELAY with their start unwritten."""
        if not self._unmarked:
            return []
        due_before = time.monotonic() - START_MARK_DELAY
        # In start order: the first that is too young ends the due ones.
        due = list(itertools.takewhile(lambda r: r.started <= due_before, self._unmarked))
        for running in due:
            del self._unmarked[running]
        if self._mark_timer is None:
            self._arm_marks()
        return due

    async def _loop(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                self._idle.set()
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            marks = self._take_due_marks()
            if self._reports:
                await self._write_progress()
            if not batch and not marks:
                continue
            started = [
                (r.task.lease, r.started_at) for r, _ in batch if r.started_at is not None
            ] + [(r.task.lease, r.started_at) for r in marks if r.started_at is not None]
            try:
                applied = await self._backend.finish([(r.task.lease, o) for r, o in batch], started)
            except Exception as exc:
                failures += 1
                tried = (len(batch), len(marks), failures)
                if failures == 1:
                    logger.exception("could not write %d outcomes, %d starts (try %d)", *tried)
                else:
                    logger.warning(
                        "could not write %d outcomes, %d starts (try %d): %s: %s",
                        *tried,
                        type(exc).__name__,
                        exc,
                    )
                for running in marks:  # written with a later write
                    if not running.done:
                        self.started(running)
                if recurs(exc):
                    # Refused, not unreachable: the same batch would fail forever.
                    batch = await self._write_each(batch)
                    if not batch:
                        failures = 0
                        continue
                now = time.monotonic()
                for running, _ in batch:
                    if self._lease_until(running) <= now:
                        self._recorded(running, None)  # another worker may run it now
                batch = [(r, o) for r, o in batch if self._lease_until(r) > now]
                if batch:
                    self._pending[:0] = batch  # keep order; try again shortly
                    self._ready.set()
                await asyncio.sleep(min(0.05 * 2**failures, RETRY_WRITE_MAX))
                continue
            failures = 0
            for (running, _), ok in zip(batch, applied, strict=True):
                self._recorded(running, ok)

    async def _write_progress(self) -> None:
        """Store the pending progress reports in one write; on failure they are
        dropped (progress is a hint: the next report, or the outcome, follows)."""
        reports, self._reports = list(self._reports.values()), {}
        try:
            await self._backend.report_progress(reports)
        except Exception as exc:
            logger.warning(
                "could not store the progress of %d tasks: %s: %s",
                len(reports),
                type(exc).__name__,
                exc,
            )

    async def _write_each(
        self, batch: list[tuple[Running, Outcome]]
    ) -> list[tuple[Running, Outcome]]:
        """Write each outcome of a refused batch on its own; one still refused is
        replaced by a plain failure, and given up (its task runs again after its
        lease) if even that is refused. Returns those that met an outage instead."""
        left = []
        for running, outcome in batch:
            lease = running.task.lease
            start = [] if running.started_at is None else [(lease, running.started_at)]
            try:
                [applied] = await self._backend.finish([(lease, outcome)], start)
            except Exception as exc:
                if not recurs(exc):
                    left.append((running, outcome))
                    continue
                logger.warning(
                    "the outcome of task %s was refused (%s: %s); storing it as failed",
                    running.task.id,
                    type(exc).__name__,
                    exc,
                )
                error = _clean(f"the outcome could not be stored: {type(exc).__name__}: {exc}")
                if outcome.status == "queued":  # a retry stays a retry, at its time
                    plain = replace(outcome, result=None, error=error, traceback=None)
                else:
                    plain = Outcome("failed", error=error)
                running.outcome = plain
                try:
                    [applied] = await self._backend.finish([(lease, plain)], start)
                except Exception as again:
                    if not recurs(again):
                        left.append((running, plain))
                        continue
                    logger.exception(
                        "task %s: not even a failure could be stored; it runs again "
                        "once its lease expires",
                        running.task.id,
                    )
                    applied = None
            self._recorded(running, applied)
        return left

    async def close(self) -> None:
        """Stop once every pending outcome is written (or given up on)."""
        await self._idle.wait()
        if self._mark_timer is not None:
            self._mark_timer.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _clean(text: str) -> str:
    """``text`` as any database stores it: PostgreSQL text refuses NUL, and no
    driver encodes a lone surrogate."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable(outcome: Outcome) -> Outcome:
    """``outcome`` with its error and traceback as any database stores them
    (NUL and lone surrogates escaped)."""
    error = _clean(outcome.error or "")
    tb = None if outcome.traceback is None else _clean(outcome.traceback)
    if error == outcome.error and tb == outcome.traceback:
        return outcome
    return replace(outcome, error=error, traceback=tb)


# SQLSTATEs that say the value written is at fault, so writing it again fails
# again: 22 data exception (e.g. NUL in text), 23 integrity constraint
# violation, 54000 program limit exceeded (e.g. a value too long).
_RECURRING_SQLSTATES = ("22", "23", "54000")


def recurs(exc: BaseException) -> bool:
    """True when the error of a write is known to recur for what was written
    (refused data); False for everything else, which may pass (outages, locks,
    deadlocks, serialization failures, timeouts, a failover, a full disk...).
    Follows the causes of a wrapped error."""
    import sqlite3  # the stdlib module; cheap once imported

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_RECURRING_SQLSTATES):
            return True
        if isinstance(current, (sqlite3.DataError, sqlite3.IntegrityError)):
            return True  # a constraint or trigger's RAISE(ABORT), a value too big
        if getattr(current, "sqlite_errorname", None) == "SQLITE_TOOBIG" or (
            isinstance(current, sqlite3.Error) and "string or blob too big" in str(current)
        ):
            return True
        if isinstance(current, (ValueError, OverflowError)) and not isinstance(current, SitqError):
            return True  # the driver cannot encode the value (UnicodeEncodeError...)
        current = current.__cause__
    return False
