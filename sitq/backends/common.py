"""What both SQL backends share, written once.

:class:`SQLBackend` holds every method of the storage contract whose code is
the same in SQLite and PostgreSQL but for its SQL: each backend names its
queries alike in its ``sql/*.sql`` files and runs them through a few primitives
(``_fetch``, ``_execute``, ``_transaction``, ``_snapshot``, ``_array``). The
claim, finish and enqueue paths, tuned to each database, stay in each backend.
Also here: the store session both give the layers, the event-loop binding both
enforce, and the translation of either driver's errors into sitq's.

It is one module, over 500 lines, because :class:`SQLBackend` is one class:
splitting its methods by concern would mean mixins that each reach for the
same primitives and connection state, harder to follow than one file.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import math
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import astuple, replace
from typing import Any, ClassVar, Protocol, TypeVar

from sitq.backends import rewait
from sitq.backends.base import (
    LOST_LEASE_LIMIT,
    RECLAIM_INTERVAL,
    WAITING_OFFSET,
    Activity,
    Backend,
    BorrowedConnection,
    ClaimedTask,
    Dependency,
    Lease,
    LimitRecord,
    NewTask,
    ParentResult,
    Progress,
    ProgressReport,
    ScheduleRecord,
    SchemaState,
    TaskCounts,
    TaskLinks,
    TaskPage,
    TaskRecord,
    TaskWriter,
    WakeKind,
    WorkerRecord,
    claimed_tasks,
    dependency_order,
    stored_progress,
    task_record,
)
from sitq.backends.borrowed import DriverConnection, SQLBorrowed
from sitq.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidDependency,
    NotConnected,
    SchemaVersionError,
    SitqError,
    StorageError,
)
from sitq.sqlfiles import Dialect, Queries
from sitq.store import StoreTransaction

T = TypeVar("T")

#: A TaskRecord's columns after its id, in its order (each dialect's get_tasks
#: reads the id as text before them).
TASK_COLUMNS = (
    "queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, result, error, traceback, "
    "progress_done, progress_total, progress_message, progress_at"
)
#: The longest progress message stored (a longer one is cut).
PROGRESS_MESSAGE_LIMIT = 1000

#: How far back (seconds) counts() reads "finished since" from the per-second
#: finish counts; further back it scans. prune folds the seconds older than this
#: and FINISHED_FOLD_MARGIN (room for clocks that differ between hosts).
FINISHED_HORIZON = 3600.0
FINISHED_FOLD_MARGIN = 600.0
#: Seconds past the moment a rate limit's window frees room that an idle worker
#: claims again: a claim stamps its starts, and its tasks start a few ms later,
#: so a claim at the very edge could put two windows' starts within one window
#: of each other as the tasks themselves saw them.
RATE_WINDOW_SLACK = 0.05


def lease_key(lease: Lease) -> tuple[str, str, int]:
    """The values that prove a lease: task, worker, attempt."""
    return (lease.task_id, lease.worker_id, lease.attempt)


def limit_room_allowed(room_row: Sequence[Any], room: int) -> int:
    """How many tasks of one limit key may start now, from a row of
    (key, running room or None, starts room or None, ...), at most ``room``."""
    return min(room, *(room if left is None else left for left in room_row[1:3]))


def listing_position(source: str, cursor: str | None) -> tuple[Any, ...]:
    """The keyset position a listing cursor names (the start when None): a task id,
    (finished_at, id) for failures, or a batch position. A malformed cursor is an
    error that says what to pass."""
    try:
        if source == "batch":
            return (-1 if cursor is None else int(cursor),)
        if source == "failed":
            finished_at, task_id = ("1e300", "~") if cursor is None else cursor.split(":", 1)
            return (float(finished_at), task_id)
        if cursor is not None and not 0 < len(cursor) <= 64:
            raise ValueError(cursor)
        # "~" sorts after every text id, and SQLite sorts any text after every integer id.
        return ("~" if cursor is None else cursor,)
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid listing cursor {cursor!r}: pass the next_cursor of a previous page "
            "of the same listing, or none for the first page"
        ) from exc


class Transaction(StoreTransaction, Protocol):
    """Statements in one transaction of an :class:`SQLBackend`."""

    async def wake(self, kind: WakeKind) -> None:
        """Wake the waiters on ``kind`` once the transaction commits."""


class SQLBackend(Backend):
    """A backend on an SQL database: the contract's methods both dialects share.

    A subclass opens and shuts its store (``_open``, ``_shut``) and runs SQL
    through the primitives below. Parameters are positional, bound from one
    sequence (``?`` or ``?1`` in SQLite, ``$1`` in PostgreSQL).
    """

    #: The dialect's named queries (its ``sql/*.sql`` files), the schema version
    #: this sitq writes, and the migrations up to it.
    SQL: ClassVar[Queries]
    SCHEMA_VERSION: ClassVar[int]
    MIGRATIONS: ClassVar[dict[int, tuple[str, ...]]]
    dialect: ClassVar[Dialect]
    #: SQL for "column {0} is in array parameter {1}", and for parameter {0}.
    _IN_ARRAY: ClassVar[str]
    _PARAM: ClassVar[str]
    #: The SQL function giving a blob's size without loading it.
    _LENGTH: ClassVar[str]
    #: Errors on which ``retry`` runs again once: a unique enqueue committed
    #: meanwhile, which a fresh snapshot sees.
    _RETRY_AGAIN_ON: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self) -> None:
        self._users = 0
        self._open_lock = asyncio.Lock()
        self._loop_binding = LoopBinding()
        # Work a claim does at most once per RECLAIM_INTERVAL: when it is next due.
        self._reclaim_at = self._limits_read_at = 0.0
        self._has_limits = False
        self._session: BackendSession | None = None

    # -- what each backend provides -------------------------------------------

    def _bind_loop(self) -> None:
        """Make the loop-bound parts afresh: another event loop connects."""
        self._open_lock = asyncio.Lock()

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open the store unless it is open, creating or migrating its schema."""

    @abc.abstractmethod
    async def _shut(self) -> None:
        """Close the store: its last user closed."""

    @abc.abstractmethod
    async def _stored_version(self) -> int | None:
        """The schema version stored (0 if sitq_meta holds none), or None with no
        sitq tables, read on a connection of its own that writes nothing."""

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of one statement."""

    @abc.abstractmethod
    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, atomic on its own; the rows it changed."""

    @abc.abstractmethod
    async def _transaction(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """``body`` in one transaction, whose wake-ups are sent once it commits."""

    @abc.abstractmethod
    async def _snapshot(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """``body``'s reads, all from one snapshot of the database."""

    @abc.abstractmethod
    def _array(self, values: Sequence[Any]) -> Any:
        """A list as one query parameter (see ``_IN_ARRAY``)."""

    async def _lookup(self, task_ids: Sequence[str]) -> Sequence[str]:
        """Those of ``task_ids``, given by a caller, that could name a task here:
        all of them, unless the store's ids have one exact form (SQLite's
        integer row ids), which an id of another form must not reach."""
        return task_ids

    @abc.abstractmethod
    def _rows(self, rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        """Rows of values as query parameters: one JSON array of them in SQLite,
        an array per column in PostgreSQL."""

    @abc.abstractmethod
    async def _claim_ready(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        """Claim up to ``room`` ready tasks that have no limit key: rows for
        ``claimed_tasks``."""

    @abc.abstractmethod
    async def _claim_limited(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        """Claim up to ``room`` ready tasks under limits, as many as each allows."""

    async def _count_released(self, tx: Transaction, params: Sequence[Any]) -> None:
        """Run just before ``release`` with its parameters: count the tasks it ends
        where the finished-task counts are not kept by triggers on every move (SQLite
        counts a move out of 'running' in the statement that makes it)."""

    async def _count_reclaimed(self, tx: Transaction, now: float) -> None:
        """Run just before ``reclaim_expired`` at ``now``: see ``_count_released``."""

    def _window_query(
        self, source: str, position: tuple[Any, ...], size: int, batch_id: str | None
    ) -> tuple[str, Sequence[Any]]:
        """The query and parameters that read ``size`` rows of a listing's window."""
        if source == "batch":
            return self.SQL.list_window_batch, (size, batch_id, *position)
        return self.SQL[f"list_window_{source}"], (size, *position)

    # -- connection -----------------------------------------------------------

    async def connect(self) -> None:
        """Open the store and bring its schema up to date. Reference-counted: a
        backend shared by a queue and workers in one process is opened once and
        closed by the last ``close()``. One event loop at a time: its connections,
        locks and wake-ups belong to the loop that connected (see ``LoopBinding``)."""
        if self._loop_binding.bind(self.describe()):
            self._bind_loop()
        async with self._open_lock:  # a queue and a worker may connect at once
            self._users += 1
            try:
                await self._open()
            except BaseException:
                self._users -= 1
                if not self._users:
                    self._loop_binding.release()
                raise

    async def close(self) -> None:
        """Close the store once the last user has closed."""
        async with self._open_lock:
            self._users = max(0, self._users - 1)
            if self._users:
                return
            try:
                await self._shut()
            finally:
                self._loop_binding.release()  # only once closed: another loop may open it

    async def peek_schema(self) -> SchemaState:
        """See :meth:`Backend.peek_schema`."""
        return SchemaState(self.describe(), await self._stored_version(), self.SCHEMA_VERSION)

    def _not_connected(self) -> NotConnected:
        return NotConnected(
            f"{self.describe()} is not connected: call `await connect()` first "
            "(or use `async with`)"
        )

    async def _upgrade(self, tx: Transaction, version: int, where: str) -> None:
        """Migrate the schema from ``version`` in ``tx``; refuse a newer one."""
        if version > self.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{where} has sitq schema version {version}, but this sitq "
                f"understands up to {self.SCHEMA_VERSION}: upgrade sitq to use it"
            )
        for target in range(version + 1, self.SCHEMA_VERSION + 1):
            for statement in self.MIGRATIONS[target]:
                await tx.execute(statement)
            await self._upgraded(tx, target, version)
            await tx.execute(self.SQL.write_schema_version, (str(target),))

    def reserves_ids(self) -> bool:
        """Task ids come from blocks reserved in the database (``reserve_body``)."""
        return False

    async def use_text_ids(self) -> bool:
        """Keep tasks under text ids from now on if the backend can (see
        :meth:`sitq.store.StoreSession.keep_text_ids`)."""
        return not self.reserves_ids()

    def reserve_body(self, count: int) -> Callable[[Transaction], Awaitable[list[str]]]:
        """A transaction body that reserves exactly ``count`` ids and returns them
        (for a borrowed connection; see ``reserves_ids``)."""
        raise NotImplementedError

    async def _upgraded(self, tx: Transaction, version: int, start: int) -> None:
        """Run after the statements of the upgrade to ``version`` (of an upgrade
        from ``start``, 0 for a new database), in ``tx``: what a migration does
        that SQL alone cannot."""

    # -- the application's own transaction ----------------------------------

    def borrow(self, connection: Any) -> BorrowedConnection:
        """A writer on the application's ``connection``, inside its transaction
        (see :mod:`sitq.backends.borrowed`). An object of a driver this backend
        does not take is refused here, with the ones it takes."""
        if type(connection).__module__.split(".")[0] != "sqlalchemy":
            self._adapt(connection)  # refuses an unsupported object now
        return SQLBorrowed(self, connection, blocking=self._blocking_driver(connection))

    @abc.abstractmethod
    def _adapt(self, connection: Any) -> DriverConnection:
        """The adapter over a driver's connection; ConfigurationError naming the
        supported drivers for anything else."""

    def _blocking_driver(self, connection: Any) -> bool:
        """Whether ``connection`` belongs to a blocking driver."""
        return False

    @abc.abstractmethod
    async def _borrow_reference(self) -> object:
        """What identifies this backend's database, read on its own connections."""

    @abc.abstractmethod
    async def _borrow_check(self, adapter: DriverConnection, reference: object) -> None:
        """Refuse ``adapter`` unless it reaches the database ``reference`` names
        (the error names both, never a password) and sitq's tables are there."""

    def store_session(self) -> BackendSession:
        """SQL on this database for the layers' stores (see ``StoreSession``)."""
        if self._session is None:
            self._session = BackendSession(self)
        return self._session

    # -- tasks ------------------------------------------------------------------

    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """Insert ``task`` unless a queued or running task holds its unique key."""
        while True:
            task_id, created = await self._transaction(self.unique_body(task))
            if task_id is not None:
                return task_id, created
            # The holder finished between the two statements: try again.

    def unique_body(
        self, task: NewTask
    ) -> Callable[[Transaction], Awaitable[tuple[str | None, bool]]]:
        """The transaction body of ``enqueue_unique``: (id, True) if ``task`` was
        inserted, else the holder's id (None if it finished meanwhile) and False."""

        async def body(tx: Transaction) -> tuple[str | None, bool]:
            if await tx.fetch(self.SQL.insert_unique_task, task):
                await tx.wake("tasks")
                return task.id, True
            holder = await tx.fetch(self.SQL.existing_unique, (task.unique_key,))
            return (holder[0][0] if holder else None), False

        return body

    async def get_tasks(
        self, task_ids: Sequence[str], *, with_payload: bool = False, with_result: bool = True
    ) -> dict[str, TaskRecord]:
        """Stored records of ``task_ids``, in one query."""
        columns = TASK_COLUMNS if with_result else TASK_COLUMNS.replace(" result,", " NULL,")
        payload = "payload" if with_payload else "NULL"
        sizes = f"{self._LENGTH}(payload), {self._LENGTH}(result)"
        sql = self.SQL.get_tasks.replace("{columns}", f"{columns}, {payload}, {sizes}")
        rows = await self._fetch(sql, (self._array(await self._lookup(task_ids)),))
        return {row[0]: task_record(row) for row in rows}

    async def cancel(self, task_id: str) -> str | None:
        """Cancel a queued task now, or ask a running task's worker to stop it."""
        if not await self._lookup([task_id]):
            return None
        now = self.now()

        async def body(tx: Transaction) -> str | None:
            # Read with the row locked: a worker's finish or retry cannot slip in
            # between reading the status and acting on it.
            found = await tx.fetch(self.SQL.lock_task_status, (task_id,))
            if not found:
                return None
            if found[0][0] == "queued":
                ids = self._array([task_id])
                await tx.fetch(self.SQL.cancel_queued, (ids, now, self.default_result_ttl))
                await tx.wake("results")
                await tx.wake("tasks")  # its "run" dependents may be due now
                return "cancelled"
            if found[0][0] == "running":
                await tx.execute(self.SQL.request_cancel, (task_id,))
                # Its worker heartbeats at once, not up to 10 s later: a task it
                # holds but has not started then ends cancelled without running.
                await tx.wake("cancels")
                return "requested"
            return "finished"

        return await self._transaction(body)

    async def cancel_queued(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel the still-queued ones of ``task_ids`` in one statement."""
        task_ids = await self._lookup(task_ids)
        if not task_ids:
            return []
        params = (self._array(task_ids), self.now(), self.default_result_ttl)

        async def body(tx: Transaction) -> list[Sequence[Any]]:
            rows = await tx.fetch(self.SQL.cancel_queued, params)
            if rows:
                await tx.wake("results")
                await tx.wake("tasks")
            return rows

        return [row[0] for row in await self._transaction(body)]

    async def retry(
        self, task_ids: Sequence[str] | None = None, queue: str | None = None
    ) -> list[str]:
        """Queue failed or cancelled tasks again, with a fresh attempt count."""
        # SQL.retry's {where}: the ids or every failure, and the queue if given.
        params: list[Any] = [self.now()]
        where = "status = 'failed'"
        if task_ids is not None:
            task_ids = await self._lookup(task_ids)
            if not task_ids:
                return []
            params.append(self._array(task_ids))
            where = self._IN_ARRAY.format("id", 2)
        if queue is not None:
            params.append(queue)
            where += " AND queue = " + self._PARAM.format(len(params))
        sql = self.SQL.retry.replace("{where}", where)

        async def body(tx: Transaction) -> list[str]:
            rows = await tx.fetch(sql, params)
            if rows:
                await tx.wake("tasks")
            linked = [row[0] for row in rows if row[1]]
            if linked:
                await self._rewait(tx, linked, params[0])
            return [row[0] for row in rows]

        try:
            return await self._transaction(body)
        except self._RETRY_AGAIN_ON:
            return await self._transaction(body)

    async def _rewait(self, tx: Transaction, retried: list[str], now: float) -> None:
        """The dependency graph around ``retried`` (just queued again) waits for
        them again (see :mod:`sitq.backends.rewait`)."""
        family = [row[0] for row in await tx.fetch(self.SQL.retry_family, (self._array(retried),))]
        # With their parents, locked before the read (PostgreSQL): a parent's
        # finish in flight is waited for, so the read counts it.
        await tx.fetch(self.SQL.lock_tasks, (self._array(family),))
        nodes = rewait.nodes_from_rows(
            await tx.fetch(self.SQL.family_state, (self._array(family),))
        )
        rows = rewait.rewait_rows(retried, nodes, now)
        if rows:
            await tx.execute(self.SQL.set_wait_state, self._rows(rows))

    async def enqueue_dependent(
        self, tasks: Sequence[NewTask], dependencies: Sequence[Dependency]
    ) -> None:
        """Store ``tasks`` and their dependencies in one transaction (see
        :meth:`Backend.enqueue_dependent`)."""
        if tasks:
            await self._transaction(self.dependent_body(tasks, dependencies))

    def dependent_body(
        self, tasks: Sequence[NewTask], dependencies: Sequence[Dependency]
    ) -> Callable[[Transaction], Awaitable[None]]:
        """The transaction body of ``enqueue_dependent`` (``tasks`` not empty);
        a self-dependency or a cycle is refused here, before any statement."""
        tasks = dependency_order(tasks, dependencies)  # refuses self-dependency and cycles
        new = {task.id: task for task in tasks}
        waits = {dep.task_id: dep for dep in dependencies}
        stored_parents = sorted({p for dep in dependencies for p in dep.parents if p not in new})
        now, ttl = self.now(), self.default_result_ttl

        async def body(tx: Transaction) -> None:
            # parent id -> (stored status, the root of its parent-failure cancel)
            state: dict[str, tuple[str, str | None]] = {}
            if stored_parents:
                rows = await tx.fetch(self.SQL.lock_parents, (self._array(stored_parents),))
                state = {row[0]: (row[1], row[2]) for row in rows}
                missing = [p for p in stored_parents if p not in state]
                if missing:
                    raise InvalidDependency(
                        f"unknown parent task id(s) {', '.join(missing[:5])} in {self.describe()}: "
                        "depend only on ids this database's enqueue returned (an id of another "
                        "database, or a task pruned or purged since, is unknown here); "
                        "nothing was enqueued"
                    )
            marks, links, rows_out = dependency_rows(tasks, waits, state)
            stored = [
                task._replace(available_at=task.available_at + WAITING_OFFSET)
                if marks.get(task.id, (0,))[0] > 0
                else task
                for task in tasks
            ]
            await tx.insert_tasks(stored)
            if rows_out:
                await tx.execute(self.SQL.mark_dependents, (*self._rows(rows_out), now, ttl))
            if links:
                await tx.execute(self.SQL.insert_dependencies, self._rows(links))
            if any(row[4] is not None for row in rows_out):
                await tx.wake("results")

        return body

    async def task_links(self, task_id: str, *, with_results: bool = False) -> TaskLinks | None:
        """A task's parents, dependents and wait, read from one snapshot."""
        if not await self._lookup([task_id]):
            return None

        async def body(tx: Transaction) -> TaskLinks | None:
            found = await tx.fetch(self.SQL.task_wait_state, (task_id,))
            if not found:
                return None
            parents = await tx.fetch(self.SQL.task_parents, (task_id,))
            children = await tx.fetch(self.SQL.task_children, (task_id,))
            results = None
            if with_results:
                rows = await tx.fetch(self.SQL.task_parent_results, (task_id,))
                results = [ParentResult(*row) for row in rows]
            waiting, mode, cancelled_by = found[0]
            return TaskLinks(
                [row[0] for row in parents],
                [row[0] for row in children],
                int(waiting),
                mode,
                cancelled_by,
                results,
            )

        return await self._snapshot(body)

    async def purge(
        self, statuses: Sequence[str], queue: str | None = None, older_than: float | None = None
    ) -> int:
        """Delete tasks in ``statuses``, optionally of one queue and finished long ago."""
        if not statuses:
            return 0
        # Only the filters given become clauses (SQL.purge's {where}), numbered in order.
        clauses = [self._IN_ARRAY.format("status", 1)]
        params: list[Any] = [self._array(statuses)]
        if queue is not None:
            params.append(queue)
            clauses.append("queue = " + self._PARAM.format(len(params)))
        if older_than is not None:
            params.append(self.now() - older_than)
            clauses.append(
                "COALESCE(finished_at, enqueued_at) < " + self._PARAM.format(len(params))
            )
        sql = self.SQL.purge.replace("{where}", " AND ".join(clauses))

        async def body(tx: Transaction) -> int:
            deleted = await tx.execute(sql, params)
            if deleted and not set(statuses) <= {"succeeded", "failed", "cancelled"}:
                # An unfinished parent's purge settles its dependents (a trigger):
                # some may be due now, or cancelled.
                await tx.wake("tasks")
                await tx.wake("results")
            return deleted

        return await self._transaction(body)

    async def prune(self) -> int:
        """Delete finished tasks past their retention, and workers gone for a day;
        fold the finish counts' seconds older than the horizon into one."""
        now = self.now()

        async def body(tx: Transaction) -> int:
            await tx.execute(self.SQL.prune_workers, (now - 86400.0,))
            pruned = await tx.execute(self.SQL.prune_tasks, (now,))
            # The finish counts' old seconds folded into one (schema version 11),
            # well past what counts() reads by the second.
            folded = math.floor(now - FINISHED_HORIZON - FINISHED_FOLD_MARGIN)
            await tx.execute(self.SQL.fold_finished, (folded,))
            await tx.execute(self.SQL.drop_folded, (folded,))
            return pruned

        return await self._transaction(body)

    # -- statuses, counts, listings ----------------------------------------------

    async def count_statuses(self, task_ids: Sequence[str]) -> dict[str, int]:
        """The given tasks per status."""
        rows = await self._fetch(
            self.SQL.count_statuses, (self._array(list(set(await self._lookup(task_ids)))),)
        )
        return {row[0]: int(row[1]) for row in rows}

    async def task_statuses(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Each given task's status."""
        rows = await self._fetch(
            self.SQL.task_statuses, (self._array(await self._lookup(task_ids)),)
        )
        return {row[0]: row[1] for row in rows}

    async def task_progress(
        self, task_ids: Sequence[str]
    ) -> dict[str, tuple[str, Progress | None]]:
        """Each given task's status and latest progress, in one query."""
        rows = await self._fetch(
            self.SQL.task_progress, (self._array(await self._lookup(task_ids)),)
        )
        return {row[0]: (row[1], stored_progress(row[2:6])) for row in rows}

    async def report_progress(self, reports: Sequence[ProgressReport]) -> int:
        """Store the reports whose lease holds, in one statement, and wake the watchers."""
        if not reports:
            return 0
        rows = self._rows(
            [(*lease_key(r.lease), r.done, r.total, _storable_message(r.message)) for r in reports]
        )

        async def body(tx: Transaction) -> int:
            applied = await tx.execute(self.SQL.report_progress, (self.now(), *rows))
            if applied:
                await tx.wake("progress")
            return applied

        return await self._transaction(body)

    async def counts(
        self, *, statuses: bool = True, finished_since: float | None = None, retrying: bool = False
    ) -> TaskCounts:
        """Tasks per (queue, status), and those finished since ``finished_since``
        (by whole seconds: rounded down), all from one snapshot and none by a scan
        of the finished tasks: the queued and running ones from their indexes, the
        finished ones from the counts the schema's triggers keep (version 11).
        Finishes further back than ``FINISHED_HORIZON`` are counted by a scan."""
        since = None if finished_since is None else math.floor(finished_since)
        recent = since is not None and since >= self.now() - FINISHED_HORIZON

        async def read(tx: Transaction) -> tuple[list[Sequence[Any]], ...]:
            live = await tx.fetch(self.SQL.live_counts) if statuses else []
            ended = await tx.fetch(self.SQL.finished_counts) if statuses else []
            if since is None:
                window: list[Sequence[Any]] = []
            elif recent:
                window = await tx.fetch(self.SQL.finished_since, (since,))
            else:
                window = await tx.fetch(self.SQL.scan_finished_since, (float(since),))
            waiting = await tx.fetch(self.SQL.retrying_counts) if retrying else []
            return live, ended, window, waiting

        live, ended, window, waiting = await self._snapshot(read)
        counted: dict[tuple[str, str], int] = {}
        for queue, state, n in (*live, *ended):
            counted[queue, state] = counted.get((queue, state), 0) + int(n)
        return TaskCounts(
            {key: n for key, n in counted.items() if n},
            None if since is None else {(r[0], r[1]): int(r[2]) for r in window if r[2]},
            {row[0]: int(row[1]) for row in waiting},
        )

    async def activity(self, failures: int) -> Activity:
        """Ready, claimed and running tasks and the latest failures, read from one
        snapshot of the database."""
        now = self.now()

        async def read(tx: Transaction) -> tuple[list[Sequence[Any]], ...]:
            return (
                await tx.fetch(self.SQL.oldest_waiting, (now,)),
                await tx.fetch(self.SQL.claimed_counts),
                await tx.fetch(self.SQL.running_tasks),
                await tx.fetch(self.SQL.recent_failures, (failures,)) if failures else [],
            )

        ready, claimed, running, failed = await self._snapshot(read)
        return Activity(
            {row[0]: (float(row[1]), int(row[2])) for row in ready},
            {(row[0], row[1]): int(row[2]) for row in claimed},
            [task_record(row) for row in running],
            [task_record(row) for row in failed],
        )

    async def list_tasks(
        self,
        *,
        queue: str | None = None,
        status: str | None = None,
        batch_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        scan_limit: int = 5000,
    ) -> TaskPage:
        """A bounded window of rows from the index that serves these filters (a
        batch's members, the failures, the running tasks, or every task by id),
        then the matching tasks in one query (see :meth:`Backend.list_tasks`)."""
        source = "tasks" if status not in ("failed", "running") else status
        if batch_id is not None:
            source = "batch"
        position = listing_position(source, cursor)
        # With no filter left to apply (the source is the filter), the page is the
        # window's first ``limit`` rows; else up to ``scan_limit`` rows are read and
        # filtered, so a page reads no more than that however rare its matches.
        filtered = queue is not None or (status is not None and source not in ("failed", "running"))
        size = max(limit, scan_limit) if filtered else limit
        rows = await self._fetch(*self._window_query(source, position, size, batch_id))
        # Rows of (position, id, queue, status); a failure's position is (finished_at, id).
        window = [
            (f"{r[1]!r}:{r[0]}", *r[2:]) if source == "failed" else (str(r[0]), *r[1:])
            for r in rows
        ]
        ids: list[str] = []
        next_cursor = window[-1][0] if window and len(rows) == size else None
        for key, task_id, task_queue, task_status in window:
            if (queue is None or task_queue == queue) and (status is None or task_status == status):
                ids.append(task_id)
                if len(ids) == limit:
                    next_cursor = key
                    break
        found = await self._fetch(self.SQL.list_tasks_by_id, (self._array(ids),)) if ids else []
        # A task deleted between the window's scan and this read is left out.
        records = {row[0]: task_record(row) for row in found}
        return TaskPage([records[i] for i in ids if i in records], next_cursor)

    # -- workers ------------------------------------------------------------------

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[ClaimedTask]:
        """Take up to ``limit`` ready tasks; reclaim expired leases first (at most
        once a second)."""
        if limit <= 0:
            return []
        now = self.now()
        expires = now + lease_seconds
        if now >= self._reclaim_at:
            self._reclaim_at = now + RECLAIM_INTERVAL
            await self._reclaim_expired(now)
        if now >= self._limits_read_at:
            # Read at most once a second: a task enqueued under a new limit waits
            # at most that long for its first claim.
            self._limits_read_at = now + RECLAIM_INTERVAL
            self._has_limits = bool(await self._fetch(self.SQL.any_limit))
        rows: list[Any] = []
        if self._has_limits:
            # Limited tasks first: they are few at a time by nature, and would
            # otherwise wait for a lull in the unlimited ones.
            rows = await self._claim_limited(worker_id, queues, limit, now, expires)
        limited = {row[0] for row in rows}
        if len(rows) < limit:
            rows += await self._claim_ready(worker_id, queues, limit - len(rows), now, expires)
        claimed = claimed_tasks(rows, worker_id, now)
        if limited:
            for task in claimed:
                if task.id in limited:
                    task.lease = replace(task.lease, limited=True)
        return claimed

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """When a queued task of ``queues`` or a lease falls due (see Backend):
        a few index seeks, no scan. A paused queue's tasks are left out: resuming
        it wakes the workers (before, an idle worker polled 20 times a second
        while one waited).

        A task under a limit is due when its limit has room: at once or at its
        own time while there is room; when the oldest start leaves the window of
        a rate limit that has none. Under a full concurrency limit it has no
        time: a limited task's end wakes the workers (``finish``), and a lost
        lease falls due with the leases (an idle worker polled 20 times a second
        while any limited task waited)."""
        now = self.now()
        paused = {row[0] for row in await self._fetch(self.SQL.paused_queues)}
        times = [row[0] for row in await self._fetch(self.SQL.next_lease_expiry)]
        if self._has_limits:
            rows = await self._fetch(self.SQL.limited_due, (now, self._array(queues)))
            for running_room, starts_left, window_frees_at, first_at in rows:
                if running_room is not None and running_room <= 0:
                    continue
                if starts_left is not None and starts_left <= 0:
                    # No starts left: none can be recorded until the window moves.
                    times.append(max(first_at, (window_frees_at or now) + RATE_WINDOW_SLACK))
                else:
                    times.append(first_at)
        for queue in queues:
            if queue in paused:
                continue
            # A queue of more than 32 priorities is not read to the end: its time is
            # unknown, and the poll interval bounds the wait as when nothing waits.
            times += [
                t for t, more in await self._fetch(self.SQL.next_due_in_queue, (queue,)) if not more
            ]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    async def _reclaim_expired(self, now: float) -> None:
        params = (now, LOST_LEASE_LIMIT, self.default_result_ttl)

        async def body(tx: Transaction) -> None:
            await self._count_reclaimed(tx, now)
            if await tx.execute(self.SQL.reclaim_expired, params):
                await tx.wake("results")
                await tx.wake("tasks")

        await self._transaction(body)

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give tasks back without counting the attempt (cancel-requested ones end
        cancelled), in one statement."""
        if not leases:
            return 0
        # Each lease once (a count of what it ends reads them: see _count_released).
        leased = self._rows(list(dict.fromkeys(lease_key(lease) for lease in leases)))

        async def body(tx: Transaction) -> int:
            params = (self.now(), self.default_result_ttl, *leased)
            await self._count_released(tx, params)
            rows = await tx.fetch(self.SQL.release, params)
            await tx.wake("tasks")
            await tx.wake("results")
            return len(rows)

        return await self._transaction(body)

    async def heartbeat(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> set[str]:
        """Renew the worker's liveness and its leases in one transaction; return
        the ids asked to cancel."""
        now = self.now()
        ids = self._array([lease.task_id for lease in leases])

        async def body(tx: Transaction) -> list[Sequence[Any]]:
            await tx.execute(self.SQL.touch_worker, (now, worker_id))
            if not leases:
                return []
            return await tx.fetch(self.SQL.renew_leases, (now + lease_seconds, worker_id, ids))

        return {row[0] for row in await self._transaction(body) if row[1]}

    async def record_start(self, lease: Lease) -> bool:
        """See Backend.record_start."""
        return await self._execute(self.SQL.record_task_start, (*lease_key(lease), self.now())) == 1

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a started worker."""
        row = astuple(worker)[
            :7
        ]  # id, hostname, pid, queues, concurrency, started_at, heartbeat_at
        await self._execute(self.SQL.upsert_worker, (*row[:3], self._array(row[3]), *row[4:]))

    async def unregister_worker(self, worker_id: str) -> None:
        """Mark a worker stopped."""
        await self._execute(self.SQL.stop_worker, (self.now(), worker_id))

    async def list_workers(self) -> list[WorkerRecord]:
        """Every known worker, newest first."""
        rows = await self._fetch(self.SQL.list_workers)
        # The queues are a JSON array in SQLite, an array in PostgreSQL.
        decoded = [(r, json.loads(r[3]) if isinstance(r[3], str) else r[3]) for r in rows]
        return [
            WorkerRecord(r[0], r[1], int(r[2]), tuple(q), int(r[4]), *r[5:8]) for r, q in decoded
        ]

    # -- limits, pauses, schedules -----------------------------------------------

    async def set_limit(self, limit: LimitRecord) -> bool:
        """Create, replace or lift a limit."""
        lift = limit.max_running is None and limit.max_starts is None
        params = (limit.key, limit.max_running, limit.max_starts, limit.per_seconds)

        async def body(tx: Transaction) -> int:
            existed = await tx.execute(self.SQL.delete_limit, (limit.key,))
            # A new limit may have more room than the old: idle workers do not
            # poll for that (see next_due). A lifted one's tasks are claimable by
            # the main claim now.
            await tx.wake("tasks")
            if not lift:
                await tx.execute(self.SQL.set_limit, params)
                return existed
            await tx.execute(self.SQL.unlimit_tasks, (limit.key,))
            await tx.execute(self.SQL.delete_limit_starts, (limit.key,))
            return existed

        existed = await self._transaction(body)
        self._limits_read_at = 0.0  # read again at the next claim
        return bool(existed)

    async def list_limits(self) -> list[LimitRecord]:
        """Every limit, by key."""
        return [LimitRecord(*row) for row in await self._fetch(self.SQL.list_limits)]

    async def set_paused(self, queue: str, paused: bool) -> bool:
        """Pause or resume ``queue``; resuming wakes the workers."""

        async def body(tx: Transaction) -> int:
            if paused:
                return await tx.execute(self.SQL.pause_queue, (queue, self.now()))
            await tx.wake("tasks")
            return await tx.execute(self.SQL.resume_queue, (queue,))

        return bool(await self._transaction(body))

    async def paused_queues(self) -> list[str]:
        """The paused queues."""
        return [row[0] for row in await self._fetch(self.SQL.paused_queues)]

    async def advance_schedule(
        self,
        name: str,
        spec: str,
        due: float,
        next_run_at: float | None,
        task: NewTask | None,
        *,
        first: bool = False,
    ) -> bool:
        """Record the run due at ``due`` and enqueue ``task``, once across workers."""
        sql = self.SQL.add_schedule if first else self.SQL.advance_schedule

        async def body(tx: Transaction) -> bool:
            if not await tx.execute(sql, (name, spec, due, next_run_at, self.now())):
                return False
            if task is not None:
                await tx.insert_tasks([task])
            return True

        return await self._transaction(body)

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        return [ScheduleRecord(*row) for row in await self._fetch(self.SQL.list_schedules)]


def _storable_message(message: str | None) -> str | None:
    """A progress message as any database stores it: bounded, no NUL (PostgreSQL
    text refuses it), no lone surrogate (no driver encodes one)."""
    if message is None:
        return None
    message = message.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    return message[:PROGRESS_MESSAGE_LIMIT]


def dependency_rows(
    tasks: Sequence[NewTask],
    waits: dict[str, Dependency],
    stored: dict[str, tuple[str, str | None]],
) -> tuple[dict[str, tuple[int, ...]], list[tuple[str, int, str]], list[tuple[Any, ...]]]:
    """What ``enqueue_dependent`` writes for new ``tasks``, given the ``stored``
    parents' (status, cancelled_by): per task its (waiting,) count, the dependency
    rows (child, position, parent), and the ``mark_dependents`` rows (id, waiting,
    mode, has_children, cancelled_by, error). The caller ordered ``tasks`` so that
    parents come before their dependents (no cycle reaches here)."""
    parents_of_new = {p for dep in waits.values() for p in dep.parents}
    state = dict(stored)  # grows with each new task, in order
    marks: dict[str, tuple[int, ...]] = {}
    links: list[tuple[str, int, str]] = []
    rows: list[tuple[Any, ...]] = []
    for task in tasks:
        dep = waits.get(task.id)
        cancelled_by: str | None = None
        error: str | None = None
        waiting = 0
        if dep is not None:
            links += [(task.id, i, parent) for i, parent in enumerate(dep.parents)]
            for parent in dep.parents:
                status, root = state[parent]
                if status in ("queued", "running"):
                    waiting += 1
                elif status != "succeeded" and dep.on_parent_failure == "cancel":
                    cancelled_by = root or parent
                    error = (
                        f"ParentFailed: parent task {parent} had already ended {status} when "
                        'this task was enqueued to wait for it (on_parent_failure="cancel")'
                    )
                    break
            if cancelled_by is not None:
                waiting = 0
        state[task.id] = ("cancelled", cancelled_by) if cancelled_by else ("queued", None)
        if dep is None and task.id not in parents_of_new:
            continue
        marks[task.id] = (waiting,)
        rows.append(
            (
                task.id,
                waiting,
                None if dep is None else dep.on_parent_failure,
                int(task.id in parents_of_new),
                cancelled_by,
                error,
            )
        )
    return marks, links, rows


class BackendSession:
    """An :class:`SQLBackend`'s :class:`~sitq.store.StoreSession`: the layers' SQL
    run by the backend's own primitives, a database error raised as sitq's."""

    def __init__(self, backend: SQLBackend) -> None:
        self._backend = backend

    @property
    def dialect(self) -> Dialect:
        """Which SQL the database speaks."""
        return self._backend.dialect

    def now(self) -> float:
        """The backend's clock."""
        return self._backend.now()

    def describe(self) -> str:
        """Where the database is (no password)."""
        return self._backend.describe()

    def array(self, values: Sequence[Any]) -> Any:
        """A list as one query parameter."""
        return self._backend._array(values)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of a SELECT."""
        with translated(self._backend):
            return await self._backend._fetch(sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, atomic on its own; the rows it changed."""
        with translated(self._backend):
            return await self._backend._execute(sql, params)

    async def transaction(self, body: Callable[[StoreTransaction], Awaitable[T]]) -> T:
        """``body`` in one transaction."""
        with translated(self._backend):  # a layer's own SitqError (BatchSizeChanged) goes as it is
            return await self._backend._transaction(body)

    async def write_soon(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write, committed on its own: PostgreSQL commits concurrent statements
        from the pool's connections in parallel, so there is nothing to gather."""
        await self.execute(sql, params)

    async def keep_text_ids(self) -> bool:
        """See :meth:`sitq.store.StoreSession.keep_text_ids`: a backend whose ids
        are text already."""
        return not self._backend.reserves_ids() or await self._backend.use_text_ids()

    async def close(self) -> None:
        """Finish the writes in flight (none here)."""


def check_database_path(text: str) -> None:
    """Refuse an SQLite path no worker could share (empty, or ``:memory:``)."""
    if not text or text == ":memory:":
        raise ConfigurationError(
            "sitq needs a database file shared with its workers: give a path such as 'tasks.db'"
        )


class LoopBinding:
    """The one event loop a backend object serves.

    Its connections, locks and wake-ups belong to the loop that connected it, so
    a second loop (another thread, e.g. a Worker beside a SyncTaskQueue) is
    refused at ``connect()`` with what to do, rather than failing later with
    "bound to a different event loop" on every claim. Once every user has
    closed, or that loop has closed, another loop may take the backend over.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard = threading.Lock()  # connect() may run in two threads at once

    def bind(self, describe: str) -> bool:
        """Bind to the running loop; True if that is a new loop (the caller then
        makes its loop-bound locks and events afresh)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if self._loop is loop:
                return False
            if self._loop is not None and not self._loop.is_closed():
                raise ConfigurationError(
                    f"this backend object ({describe}) is in use by another event loop "
                    "(another thread, or another asyncio.run): one backend object serves "
                    "one event loop. Give each its own backend, e.g. pass the path or URL "
                    "to the SyncTaskQueue and to the Worker instead of one backend object"
                )
            self._loop = loop
            return True

    def release(self) -> None:
        """The last user closed: the next ``connect()`` may come from any loop."""
        with self._guard:
            self._loop = None


#: PostgreSQL error classes that mean "not reachable now" rather than "refused":
#: connection exceptions (08...), shutdown and start-up (57P01-03), too many clients.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def translate_error(exc: BaseException, backend: TaskWriter) -> SitqError | None:
    """The SitqError a caller should see for a raw database error, or None if
    ``exc`` is not a database error (it is then raised as it is).

    Known without importing any driver: sqlite3 errors, errors carrying a
    PostgreSQL ``sqlstate``, lost connections, and the asyncpg and psycopg drivers' own.
    """
    if isinstance(exc, SitqError):
        return exc
    where = backend.describe()
    sqlite3 = sys.modules.get("sqlite3")  # not imported: exc cannot be one of its errors
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL" or "disk is full" in str(exc):
            return StorageError(
                f"cannot write to {where}: the disk is full ({exc}); nothing of this call "
                "was stored: free some space and try again"
            )
        return StorageError(f"{where} failed: {type(exc).__name__}: {exc}")
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
        isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    ):
        return DatabaseUnavailable(
            f"{where} is unreachable ({type(exc).__name__}: {exc}); it may be restarting: "
            "try again once it is back"
        )
    # asyncpg's own errors, and psycopg's (an application's connection, queue.using).
    if isinstance(sqlstate, str) or type(exc).__module__.split(".")[0] in ("asyncpg", "psycopg"):
        return StorageError(f"{where} refused the operation: {type(exc).__name__}: {exc}")
    return None


@contextlib.contextmanager
def translated(backend: TaskWriter) -> Iterator[None]:
    """Raise the SitqError of a raw database error raised in the block (the original
    as its ``__cause__``); a SitqError or any other error goes through unchanged."""
    try:
        yield
    except Exception as exc:
        error = translate_error(exc, backend)
        if error is None or error is exc:
            raise
        raise error from exc
