"""The producer API: TaskQueue (async), an :class:`~sitq.enqueuer.Enqueuer` with
the default options, and its calls on results, tasks, schedules and limits.

What it is made of lives beside it: the enqueue path in ``enqueuer``, records
and checks in ``records``, signals in ``announce``, the shared result poll loop
in ``waiters``, the overview in ``overview``; its sync face is ``sync_queue``.
TaskQueue itself stays one class in one module (about 600 lines): it is the
public API, and a reader should find every call a user makes in one place."""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from sitq import checks, schedules
from sitq.announce import announce
from sitq.backends import base, open_backend
from sitq.backends.base import (
    WORKER_STALE_AFTER,
    Backend,
    LimitRecord,
    Progress,
    ScheduleRecord,
    SchemaState,
    TaskLinks,
    TaskPage,
    TaskRecord,
)
from sitq.backends.common import translate_error
from sitq.enqueuer import Enqueuer, new_tasks, raise_translated, reserved_ids
from sitq.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    NotConnected,
    SitqError,
    TaskNotFound,
)
from sitq.overview import Overview, build_overview
from sitq.records import (
    CancelOutcome,
    check_callable,
    check_listing,
    check_task_id,
    check_task_ids,
    is_finished,
    record_to_result,
    stored_status,
    task_name,
    task_status,
)
from sitq.registry import TaskHandle, TaskRef, register
from sitq.schedules import CatchUp, Schedule
from sitq.serialization import Serializer, default_serializer
from sitq.store import StoreSession
from sitq.task import Result, TaskOptions, TaskStatus, check_arguments
from sitq.transactional import ConnectionEnqueuer
from sitq.waiters import ResultWaiters
from sitq.watch import WatchEvent, flatten, watch_looks

T = TypeVar("T")
Q = TypeVar("Q")
P = ParamSpec("P")
R = TypeVar("R")

#: The longest a waiter sleeps between checks when no wake-up arrives.
POLL_INTERVAL = 0.05

#: What ``TaskQueue`` opens: a Backend, a database URL or path, or None for the default.
StorageTarget = Backend | str | os.PathLike[str] | None


#: What purge deletes by default: every finished task.
FINISHED_VALUES = (TaskStatus.SUCCEEDED.value, TaskStatus.FAILED.value, TaskStatus.CANCELLED.value)


def _translating(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``method`` raising the SitqError of a raw database error (the original as
    its ``__cause__``), so a caller sees a disk full or a lost connection named."""

    @functools.wraps(method)
    async def call(self: TaskQueue, *args: Any, **kwargs: Any) -> T:
        try:
            return await method(self, *args, **kwargs)
        except SitqError:
            raise
        except Exception as exc:
            raise_translated(exc, self._backend)
            raise

    return call


def _storage_errors(cls: type[Q]) -> type[Q]:
    """Class decorator: every async method of ``cls`` translates database errors."""
    for name, method in list(vars(cls).items()):
        if inspect.iscoroutinefunction(method):
            setattr(cls, name, _translating(method))
    return cls


@_storage_errors
class TaskQueue(Enqueuer):
    """The async producer API: ``enqueue`` and ``enqueue_many`` (see
    :class:`~sitq.enqueuer.Enqueuer`), results, and the operator calls.

    :param backend: a Backend, a database URL or path (``"tasks.db"``,
        ``"sqlite:///tasks.db"``), or None for ``$SITQ_DB`` else ``sitq.db``.
    :param serializer: how calls and results become bytes (cloudpickle by default).
    :param create: False to open only an existing database: a mistyped path or a
        database without sitq's tables is an error, not a new empty database
        (what ``sitq status`` and the dashboard do). Ignored for a Backend given.
    :param alongside: on SQLite, create sitq's tables in a file that already
        holds the application's own tables (to enqueue in its transactions with
        :meth:`using`); without it such a file is refused. Needed once, when
        sitq's tables are created.

    Use ``await queue.connect()`` / ``await queue.close()``, or ``async with``.
    """

    def __init__(
        self,
        backend: StorageTarget = None,
        serializer: Serializer | None = None,
        *,
        create: bool = True,
        alongside: bool = False,
    ) -> None:
        # Each backend has its own defaults: pass an option only when it differs.
        options: dict[str, bool] = {}
        if not create:
            options["create"] = False
        if alongside:
            options["alongside"] = True
        self._backend = open_backend(backend, **options)
        self.serializer = serializer or default_serializer()
        super().__init__()
        self._connected = False
        self._waiters = ResultWaiters(self._backend, is_finished, POLL_INTERVAL)

    async def connect(self) -> None:
        """Open the backend (creating the database if needed, unless ``create=False``)."""
        if not self._connected:
            await self._backend.connect()
            self._connected = True

    async def close(self) -> None:
        """Close the backend connection this queue opened, and stop waiting for
        results (a ``get_result`` still waiting raises NotConnected)."""
        if self._connected:
            self._connected = False
            await self._waiters.close()
            await self._backend.close()

    async def peek_schema(self) -> SchemaState:
        """The sitq schema version stored in this queue's database and the one this
        sitq writes, read without connecting the queue (connected or not): nothing
        is created, a missing database reads as ``stored=None``, and an older schema
        is left as it is, where :meth:`connect` would upgrade it in place. For tools
        that must refuse such a database rather than change it (``sitq migrate``)."""
        return await self._backend.peek_schema()

    async def __aenter__(self) -> TaskQueue:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _backend_checked(self) -> Backend:
        if not self._connected:
            raise NotConnected(
                "the queue is not connected: call `await queue.connect()` first, "
                "or use `async with TaskQueue(...) as queue:`"
            )
        return self._backend

    # -- the application's own transaction ------------------------------------

    def using(self, connection: Any) -> ConnectionEnqueuer:
        """An enqueuer that writes on ``connection``, a connection your application
        holds to this queue's database, inside the transaction open on it: the
        tasks exist for workers once you commit, and never if you roll back.

        SQLite: a ``sqlite3`` or ``aiosqlite`` connection to the queue's file.
        PostgreSQL: an ``asyncpg`` connection, or a ``psycopg`` 3 one (so a
        SQLAlchemy ``AsyncConnection`` over psycopg too). A connection to another
        database, a closed one or an unsupported object is refused, and nothing
        is enqueued. On SQLite call :meth:`wake_workers` after your commit (or use
        the enqueuer as a context manager, which commits and wakes).
        """
        return ConnectionEnqueuer(
            self._backend_checked, self.serializer, self._backend.borrow(connection)
        )

    def wake_workers(self) -> None:
        """Wake this database's idle workers now, for tasks you committed on your
        own connection (``using``) on SQLite, whose commit cannot carry the
        wake-up. On PostgreSQL the commit has woken them: this does nothing."""
        self._backend.wake_workers()

    # -- results and control ----------------------------------------------

    async def get_result(self, task_id: str, timeout: float | None = None) -> Result | None:
        """The task's Result once it has finished (succeeded, failed or cancelled).

        Returns None if it has not finished within ``timeout`` seconds; with
        ``timeout=None`` waits as long as it takes. Unknown ids raise TaskNotFound.
        """
        check_task_id(task_id)
        if timeout is not None:
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
                if math.isinf(timeout) and timeout > 0:
                    timeout = None
                elif timeout < 0:
                    timeout = 0.0  # a deadline already past: look once
            if timeout is not None:
                timeout = checks.seconds("timeout", timeout, hint="; None waits for the result")
        backend = self._backend_checked()
        try:
            record = (await backend.get_tasks([task_id])).get(task_id)
        except Exception as exc:
            if not isinstance(translate_error(exc, backend), DatabaseUnavailable):
                raise
            record = None  # unreachable for now: the poll loop keeps trying
        else:
            if record is None:
                raise TaskNotFound(task_id)
        if record is None or not task_status(record).finished:
            # One poll loop per queue looks for every waiting task at once.
            found = await self._waiters.wait(task_id, timeout)
            if found is None:
                return None
            record = found
        return record_to_result(record, self.serializer)

    async def progress(self, task_id: str) -> Progress | None:
        """The latest progress the task reported from inside its run
        (``sitq.current_task().report_progress``): done, total, message and
        updated_at; None before any report. It stays after the task finishes (a
        retry's run reports afresh). Unknown ids raise TaskNotFound."""
        check_task_id(task_id)
        found = (await self._backend_checked().task_progress([task_id])).get(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        return found[1]

    def watch(
        self,
        task_ids: Sequence[str],
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        skip_missing: bool = False,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Live events of these tasks, as they happen: ``async for event in
        queue.watch(ids)``. Yields a :class:`WatchEvent` of kind "progress" when a
        task reports progress (at most about every half second per task), and one
        of kind "finished" (with its status and Result) when it ends; the
        iteration ends once every watched task has finished, or after ``timeout``
        seconds (None: no limit).

        Driven by the database's wake-ups (any process, any host), with one query
        per look over every watched task; ``poll_interval`` bounds the wait when a
        wake-up is lost. An id unknown at the start raises TaskNotFound (with
        ``skip_missing``, it is left out, as is a task deleted while watched).
        """
        return flatten(
            self.watch_looks(
                task_ids, timeout=timeout, poll_interval=poll_interval, skip_missing=skip_missing
            )
        )

    def watch_looks(
        self,
        task_ids: Sequence[str],
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        skip_missing: bool = False,
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """:meth:`watch`'s events, one list per look at the database that saw
        any (progress first, then the finished in finishing order). For a
        consumer of thousands of tasks, such as a progress bar over a batch:
        it handles each look's events at once instead of one by one."""
        if isinstance(task_ids, str):
            raise ConfigurationError("watch takes a list of task ids, not one id: pass [task_id]")
        check_task_ids(task_ids)
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout, hint="; None watches until all finish")
        interval = checks.seconds("poll_interval", poll_interval, positive=True)
        return watch_looks(
            self._backend_checked(),
            self.serializer,
            list(task_ids),
            timeout=timeout,
            poll_interval=interval,
            skip_missing=skip_missing,
        )

    async def get_results(self, task_ids: Sequence[str]) -> dict[str, Result]:
        """Results of those of ``task_ids`` that have finished, checked in bulk (no waiting)."""
        check_task_ids(task_ids)
        records = await self._backend_checked().get_tasks(task_ids)
        results: dict[str, Result] = {}
        for task_id, record in records.items():
            status = task_status(record)  # read once: this runs per task of a batch
            if status.finished:
                results[task_id] = record_to_result(record, self.serializer, status)
        return results

    async def status(self, task_id: str) -> TaskStatus:
        """Where the task is now; unknown ids raise TaskNotFound."""
        check_task_id(task_id)
        record = (await self._backend_checked().get_tasks([task_id])).get(task_id)
        if record is None:
            raise TaskNotFound(task_id)
        return task_status(record)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task. A queued task is cancelled at once; a running one is
        stopped by its worker as soon as it can (best effort). A task a worker
        holds but has not started (it reads QUEUED, ``TaskRecord.claimed``) is
        held by that worker: it is woken and ends the task cancelled, unless it
        starts first (then it is stopped as a running one). True in these cases
        (cancelled or cancel requested); False if the task had already finished.
        :meth:`request_cancel` says which of the three happened."""
        return bool(await self.request_cancel(task_id))

    async def request_cancel(self, task_id: str) -> CancelOutcome:
        """Cancel a task as :meth:`cancel` does, and say what happened:
        ``CANCELLED`` (it was queued), ``REQUESTED`` (a worker holds it and was
        asked to stop it) or ``FINISHED`` (too late). Unknown ids raise TaskNotFound.

        A task cancelled here sends ``task_cancelled`` and counts in the
        ``sitq.tasks.cancelled`` metric; one stopped by its worker is reported by it."""
        check_task_id(task_id)
        backend = self._backend_checked()
        outcome = await backend.cancel(task_id)
        if outcome is None:
            raise TaskNotFound(task_id)
        if outcome == "cancelled":
            await announce(backend, "cancelled", [task_id])
        return CancelOutcome(outcome)

    async def retry(self, task_id: str) -> bool:
        """Queue a failed or cancelled task again; False if it is not in such a state.
        A task queued again sends ``task_requeued`` and counts in ``sitq.tasks.requeued``."""
        check_task_id(task_id)
        if await self.retry_many([task_id]):
            return True
        if not await self._backend_checked().get_tasks([task_id]):
            raise TaskNotFound(task_id)
        return False

    async def retry_many(self, task_ids: Sequence[str]) -> int:
        """Queue those of the tasks that failed or were cancelled again, in one
        transaction; return how many (each sends ``task_requeued``)."""
        backend = self._backend_checked()
        requeued = await backend.retry(list(task_ids))
        await announce(backend, "requeued", requeued)
        return len(requeued)

    async def retry_failed(self, queue: str | None = None) -> int:
        """Queue every failed task again (of ``queue`` only, if given), in one
        statement; return how many (each sends ``task_requeued``)."""
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ConfigurationError(f"queue must be a non-empty string or None, got {queue!r}")
        backend = self._backend_checked()
        requeued = await backend.retry(None, queue=queue)
        await announce(backend, "requeued", requeued)
        return len(requeued)

    async def purge(
        self,
        statuses: Sequence[TaskStatus | str] = FINISHED_VALUES,
        *,
        queue: str | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete tasks in ``statuses`` (default: every finished one) with their
        results; only of ``queue``, and only finished more than ``older_than``
        seconds ago, if given. Return how many. With "queued", the tasks a worker
        holds (claimed, not started) stay; with "running", running tasks are
        deleted too, and their workers' outcomes are discarded."""
        try:
            values = [TaskStatus(status).value for status in statuses]
        except ValueError:
            known = ", ".join(s.value for s in TaskStatus)
            raise ConfigurationError(
                f"purge takes statuses among {known}, got {statuses!r}"
            ) from None
        if older_than is not None:
            older_than = checks.seconds("older_than", older_than)
        return await self._backend_checked().purge(values, queue=queue, older_than=older_than)

    async def task_record(
        self, task_id: str, *, payload: bool = False, result: bool = True
    ) -> TaskRecord | None:
        """Everything stored about a task, or None for an unknown id. Its call's
        payload is loaded only with ``payload=True`` (it may be big), its result
        unless ``result=False``; their sizes always (``payload_size``, ``result_size``)."""
        check_task_id(task_id)
        found = await self._backend_checked().get_tasks(
            [task_id], with_payload=payload, with_result=result
        )
        return found.get(task_id)

    async def task_links(self, task_id: str) -> TaskLinks | None:
        """A task's place among dependencies, or None for an unknown id: its
        ``parents`` (in the order their results are passed), its ``children`` (the
        tasks waiting for it), ``waiting`` (how many parents it still waits for:
        a waiting task is QUEUED), ``on_parent_failure``, and ``cancelled_by`` (the
        parent whose failure cancelled it; retrying that parent brings it back)."""
        check_task_id(task_id)
        return await self._backend_checked().task_links(task_id)

    async def overview(self, *, failures: int = 5, counts: bool = True) -> Overview:
        """A snapshot of the queue: per queue the tasks in each status, how many are
        ready, delayed or claimed, the oldest wait and whether it is paused; the
        workers with their heartbeat age and what each runs; the ``failures`` most
        recent failures; schedules and limits. ``counts=False`` skips counting
        every task (kept counts since schema version 11, no longer a table scan) for a
        caller that samples counts itself."""
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ConfigurationError(f"failures must be an int >= 0, got {failures!r}")
        return await build_overview(self._backend_checked(), failures=failures, counts=counts)

    async def task_counts(
        self, *, finished_since: float | None = None
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int] | None]:
        """Tasks per (queue, status); with ``finished_since`` (a database time, see
        :meth:`now`), also per (queue, status) those finished since then, by whole
        seconds (``finished_since`` is rounded down), read from the same snapshot
        (None where the backend cannot tell)."""
        counted = await self._backend_checked().counts(finished_since=finished_since)
        return counted.statuses, counted.finished

    async def retrying_counts(self) -> dict[str, int]:
        """Per queue, the queued tasks that ran before (waiting for a retry)."""
        return (await self._backend_checked().counts(statuses=False, retrying=True)).retrying

    def now(self) -> float:
        """The database's clock (unix seconds), which every stored time is read against."""
        return self._backend.now()

    def describe(self) -> str:
        """Where this queue's database is, for messages (never with a password)."""
        return self._backend.describe()

    async def stats(self) -> dict[str, Any]:
        """Counts of tasks by status, overall and per queue, and of live workers."""
        view = await self.overview(failures=0)
        return {
            "totals": dict(view.totals),
            # Only queues holding tasks (the overview lists paused empty ones too).
            "queues": {
                name: dict(summary.counts)
                for name, summary in view.queues.items()
                if any(summary.counts.values())
            },
            "workers_alive": view.workers_alive,
        }

    # -- registered and periodic tasks -------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskHandle[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], TaskHandle[P, R]]: ...

    def task(
        self, fn: Callable[P, R] | None = None, /, *, name: str | None = None, **options: Any
    ) -> Any:
        """Register a function as a task sent by name: ``@queue.task`` or
        ``@queue.task(name=..., queue=..., max_retries=..., ...)``.

        Returns a :class:`TaskHandle`: calling it runs the function here;
        ``await handle.enqueue(...)`` queues it with these options (type-checked
        against the function's signature); ``handle.with_options(...)`` overrides
        them. Workers run their own imported code for it, found by name.
        """
        enqueuer = self.with_options(**options)

        def decorate(function: Callable[P, R]) -> TaskHandle[P, R]:
            check_callable(function)
            task = name or task_name(function)
            register(task, function)
            return TaskHandle(self, function, task, enqueuer)

        return decorate if fn is None else decorate(fn)

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: float | timedelta | None = None,
        tz: str = "UTC",
        name: str | None = None,
        catch_up: CatchUp = "latest",
        misfire_grace: float = 60.0,
        **options: Any,
    ) -> Callable[[Callable[P, R]], TaskHandle[P, R]]:
        """Register a function as a task that workers run on a schedule:
        ``@queue.periodic("*/5 * * * *", tz="Europe/Paris")`` or
        ``@queue.periodic(every=30)`` (seconds, or a timedelta). Each due run is
        enqueued once across all workers; ``catch_up`` says what happens to runs
        missed while no worker ran ("latest", "all" or "skip", see
        :mod:`sitq.schedules`)."""

        def decorate(function: Callable[P, R]) -> TaskHandle[P, R]:
            handle: TaskHandle[P, R] = self.task(name=name, **options)(function)
            self.schedule(
                handle,
                cron=cron,
                every=every,
                tz=tz,
                catch_up=catch_up,
                misfire_grace=misfire_grace,
            )
            return handle

        return decorate

    def schedule(
        self,
        fn: Callable[..., Any],
        *args: Any,
        cron: str | None = None,
        every: float | timedelta | None = None,
        tz: str = "UTC",
        name: str | None = None,
        catch_up: CatchUp = "latest",
        misfire_grace: float = 60.0,
        **kwargs: Any,
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` on a schedule (cron or every seconds) from
        every worker that registered it in the same way (e.g. at import). A
        TaskHandle is sent by name with its options."""
        options = self.options
        target: Callable[..., Any] = fn
        if isinstance(fn, TaskHandle):
            options, target = fn.options, TaskRef(fn.name)
        check_callable(target)
        check_arguments(fn.fn if isinstance(fn, TaskHandle) else fn, [(args, kwargs)])
        return schedules.add(
            Schedule(
                name=name or task_name(target),
                fn=target,
                cron=cron,
                every=every.total_seconds() if isinstance(every, timedelta) else every,
                tz=tz,
                catch_up=catch_up,
                misfire_grace=misfire_grace,
                options=options,
                args=args,
                kwargs=kwargs,
            )
        )

    async def schedules(self) -> list[ScheduleRecord]:
        """The schedules workers have run, with their last and next run times."""
        return await self._backend_checked().list_schedules()

    async def advance_schedule(
        self,
        schedule: Schedule,
        due: float,
        next_run: float | None,
        *,
        run_with: TaskOptions | None = None,
        first: bool = False,
    ) -> str | None:
        """Move ``schedule`` past its run due at ``due`` (next one at ``next_run``),
        at most once across every worker. With ``run_with``, the run's task is
        enqueued with those options in the same transaction: its id is returned
        if this call enqueued it, None if another worker did (or it was not due).
        ``first``: record a schedule seen for the first time. For the scheduler."""
        backend = self._backend_checked()
        task = None
        if run_with is not None:
            call = [(schedule.args, schedule.kwargs)]
            ids = await reserved_ids(backend, 1)
            (task,) = new_tasks(self.serializer, run_with, schedule.fn, call, backend.now(), ids)
        advanced = await backend.advance_schedule(
            schedule.name, schedule.spec, due, next_run, task, first=first
        )
        return task.id if advanced and task is not None else None

    # -- limits and pausing ------------------------------------------------

    async def set_limit(
        self,
        key: str,
        *,
        max_running: int | None = None,
        max_starts: int | None = None,
        per: float | None = None,
    ) -> None:
        """Limit the tasks enqueued with ``limit_key=key`` across every worker and
        host: at most ``max_running`` at once, and at most ``max_starts`` starts
        in any ``per`` seconds. Stored in the database; replaces an earlier one."""
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"a limit key must be a non-empty string, got {key!r}")
        for label, value in (("max_running", max_running), ("max_starts", max_starts)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"{label} must be an int >= 1 or None, got {value!r}")
        if (max_starts is None) != (per is None):
            raise ConfigurationError("a rate limit needs both max_starts and per (seconds)")
        if per is not None and not (isinstance(per, (int, float)) and per > 0):
            raise ConfigurationError(f"per must be a number of seconds > 0, got {per!r}")
        if max_running is None and max_starts is None:
            raise ConfigurationError(
                "give max_running, or max_starts with per; use remove_limit() to lift a limit"
            )
        await self._backend_checked().set_limit(
            LimitRecord(key, max_running, max_starts, None if per is None else float(per))
        )

    async def remove_limit(self, key: str) -> bool:
        """Lift the limit on ``key``; returns whether there was one."""
        return await self._backend_checked().set_limit(LimitRecord(key, None, None, None))

    async def limits(self) -> list[LimitRecord]:
        """Every limit, by key."""
        return await self._backend_checked().list_limits()

    async def pause(self, queue: str) -> None:
        """Workers stop taking tasks from ``queue`` (running ones finish)."""
        await self._backend_checked().set_paused(queue, True)

    async def resume(self, queue: str) -> bool:
        """Workers take from ``queue`` again; returns whether it was paused."""
        return await self._backend_checked().set_paused(queue, False)

    async def paused(self) -> list[str]:
        """The paused queues."""
        return await self._backend_checked().paused_queues()

    # -- bulk status ---------------------------------------------------------

    async def status_counts(self, task_ids: Sequence[str]) -> dict[str, int]:
        """How many of the (distinct) tasks are in each status (every
        :class:`TaskStatus` value is a key), in one query; unknown ids are not counted."""
        counts = await self._backend_checked().count_statuses(task_ids)
        return {status.value: counts.get(status.value, 0) for status in TaskStatus}

    async def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        """Each task's status, in one query; unknown ids are absent."""
        check_task_ids(task_ids)
        found = await self._backend_checked().task_statuses(task_ids)
        return {task_id: stored_status(task_id, status) for task_id, status in found.items()}

    async def cancel_many(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel those of the tasks that are queued and not held, in one statement;
        return the ids cancelled. Running and finished ones are left alone, and so
        are claimed ones (a worker holds them, not started; they read QUEUED with
        ``TaskRecord.claimed``): ``cancel`` each of those instead."""
        backend = self._backend_checked()
        cancelled = await backend.cancel_queued(list(task_ids))
        await announce(backend, "cancelled", cancelled)
        return cancelled

    async def wait_for_results(self, timeout: float) -> None:
        """Return when results may have been written (by any process), or after
        ``timeout`` seconds. A hint for pollers: check again after it returns."""
        await self._backend_checked().wait_for_change("results", timeout)

    # -- listings (for dashboards) -------------------------------------------

    async def list_tasks(
        self,
        *,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        batch_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """One page of tasks matching every filter given (their records, without
        payload, result or traceback; ``get_result`` has those).

        Newest first (failures: most recently failed first; a batch: in its order).
        Pass the page's ``next_cursor`` as ``cursor`` for the next page; it is None
        at the end. Each call examines a bounded number of tasks, so a page may hold
        fewer than ``limit`` (even none) while more may follow.
        """
        check_listing(queue, status, batch_id, cursor, limit)
        status_value = None if status is None else TaskStatus(status).value
        return await self._backend_checked().list_tasks(
            queue=queue, status=status_value, batch_id=batch_id, cursor=cursor, limit=limit
        )

    # -- for sitq's layers and extensions ---------------------------------------

    def store_session(self) -> StoreSession:
        """For sitq's layers and extensions: SQL on the queue's own database.

        Named batches (:class:`sitq.batch.BatchStore`) and workflow runs keep their
        tables there and reach them through this; see :class:`sitq.store.StoreSession`.
        """
        return self._backend_checked().store_session()

    # -- workers -----------------------------------------------------------

    async def workers(self) -> list[base.WorkerRecord]:
        """Every worker this database knows, stopped ones included, newest first."""
        return await self._backend_checked().list_workers()

    async def live_workers(self, queue: str | None = None) -> list[base.WorkerRecord]:
        """The workers alive now (running, heard from within WORKER_STALE_AFTER
        seconds), as ``stats()`` counts them; with ``queue``, only those serving it."""
        backend = self._backend_checked()
        workers = await backend.list_workers()
        now = backend.now()
        return [
            w
            for w in workers
            if w.alive(now, WORKER_STALE_AFTER) and (queue is None or queue in w.queues)
        ]
