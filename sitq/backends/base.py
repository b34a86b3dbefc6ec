"""The storage contract every backend honours.

A backend stores tasks as bytes and knows nothing of serialization or of the
worker. All times are unix seconds (floats) on the backend's clock.

Guarantees a backend must give (the conformance suite in ``tests/backends``
checks them on every backend):

- ``enqueue`` of many tasks is one transaction.
- ``claim`` is atomic: no two claimers ever hold the same task at once. It takes
  ready tasks by priority (high first), then ``available_at``, then enqueue
  order, and also takes back tasks whose lease expired.
- ``finish`` and ``release`` apply only while the caller still holds the lease
  (same worker, same attempt, still running), so a late or duplicate finisher
  cannot overwrite a result, and a task never ends both succeeded and failed.
- Claimed is not started. A claim stores the task as 'running' under its worker's
  lease with no ``started_at``; the worker reports the start later (``finish``'s
  ``started``). Until then every read reports the task as 'queued' with
  ``TaskRecord.claimed`` set, and ``activity().running`` leaves it out; leases,
  expiry and reclaim treat it as any held task.

The contract and the records it speaks in stay in one module (about 520 lines,
most of it docstrings): a backend author reads the whole promise in one place.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from sitq.errors import ConfigurationError, InvalidDependency

# Declared with the layers' stores, implemented by every backend (store_session).
from sitq.store import StoreSession as StoreSession
from sitq.store import StoreTransaction as StoreTransaction

#: "tasks" enqueued, "results" written, "cancels" asked of tasks a worker holds,
#: "progress" reported by running tasks.
WakeKind = Literal["tasks", "results", "cancels", "progress"]

#: A task whose worker was lost this many times beyond its retries is failed,
#: so a task that kills its worker every time cannot loop forever.
LOST_LEASE_LIMIT = 3
#: Expired leases are looked for at most this often per backend instance.
RECLAIM_INTERVAL = 1.0
#: The longest wait for a "tasks" wake-up while a backend cannot hear them
#: (SQLite's wake-up folder refused, PostgreSQL's LISTEN connection down): idle
#: workers polling at this pace stand in for them.
DEAF_POLL = 0.05
#: A worker not heard from for this long is shown as dead (workers beat every
#: 10 s at most).
WORKER_STALE_AFTER = 30.0


class NewTask(NamedTuple):
    """A task ready to be stored (a tuple, so a backend can bind it as a row as is)."""

    id: str
    queue: str
    func_name: str
    payload: bytes
    priority: int
    enqueued_at: float
    available_at: float
    max_retries: int
    retry_backoff: float
    timeout: float | None
    unique_key: str | None
    result_ttl: float | None
    limit_key: str | None = None


#: Seconds a waiting task's ``available_at`` is pushed past its own time: it is
#: queued but never due until its last parent settles it (the SQL files say 1e11).
WAITING_OFFSET = 1e11


@dataclass(frozen=True)
class Dependency:
    """A new task that waits for others: its ``parents`` in order (the order their
    results are passed in) and ``on_parent_failure``: "cancel" (it ends cancelled
    when a parent fails or is cancelled) or "run" (it runs once all have finished)."""

    task_id: str
    parents: tuple[str, ...]
    on_parent_failure: str = "cancel"


def dependency_order(tasks: Sequence[NewTask], dependencies: Sequence[Dependency]) -> list[NewTask]:
    """``tasks`` with every parent among them before its dependents; a task that
    waits for itself, or a cycle among them, raises InvalidDependency."""
    waits = {dep.task_id: dep.parents for dep in dependencies}
    by_id = {task.id: task for task in tasks}
    ordered: list[NewTask] = []
    state: dict[str, int] = {}  # 1: being visited, 2: placed
    for start in by_id:
        if state.get(start):
            continue
        # Depth-first, without recursion (a chain may be thousands of steps long).
        stack = [(start, iter(waits.get(start, ())))]
        state[start] = 1
        while stack:
            node, parents = stack[-1]
            parent = next(parents, None)
            if parent is None:
                stack.pop()
                state[node] = 2
                ordered.append(by_id[node])
                continue
            if parent not in by_id:
                continue  # a stored parent
            if parent == node:
                raise InvalidDependency(
                    f"task {node} depends on itself: a task cannot wait for its own end"
                )
            if state.get(parent) == 1:
                raise InvalidDependency(
                    f"a dependency cycle through tasks {parent} and {node}: each would "
                    "wait for the other forever; nothing was enqueued"
                )
            if not state.get(parent):
                state[parent] = 1
                stack.append((parent, iter(waits.get(parent, ()))))
    return ordered


class ParentResult(NamedTuple):
    """A parent's outcome as its dependent's worker reads it (``task_links``
    ``with_results``): the stored result is None unless it succeeded with one. A
    parent whose row is gone has the status "purged" (deleted before it finished:
    it ended without a result) or "missing" (deleted after it finished), and an
    empty ``func_name``."""

    id: str
    func_name: str
    status: str
    result: bytes | None


@dataclass(frozen=True)
class TaskLinks:
    """A task's place among dependencies: its parents in order, the tasks that wait
    for it, how many parents it still waits for, what it does when one fails
    (None: it has no parents), and the parent whose failure cancelled it."""

    parents: list[str]
    children: list[str]
    waiting: int
    on_parent_failure: str | None
    cancelled_by: str | None
    #: The parents' outcomes, one per parent in order, when asked for
    #: (``with_results``); a parent deleted since is "purged" or "missing" there.
    results: list[ParentResult] | None = None


@dataclass(frozen=True)
class Lease:
    """Proof that a worker holds a task: who claimed it, and for which attempt."""

    task_id: str
    worker_id: str
    attempt: int
    #: The task's queue, as claimed (None where unknown): a backend may count a
    #: finish by it without reading the row back. Not part of the proof.
    queue: str | None = field(default=None, compare=False)
    #: Claimed under a limit: its end frees room, so the finish wakes the workers
    #: (their idle wait does not poll for it). Not part of the proof.
    limited: bool = field(default=False, compare=False)


# Built once per task on the worker's hot path: slots and no frozen guard (a
# frozen dataclass sets each field through object.__setattr__, which cost more
# than the rest of the claim's Python). Treat it as read-only all the same.
@dataclass(slots=True)
class ClaimedTask:
    """A task a worker has just claimed (read-only by convention)."""

    id: str
    queue: str
    func_name: str
    payload: bytes
    attempts: int
    max_retries: int
    retry_backoff: float
    timeout: float | None
    enqueued_at: float
    claimed_at: float  # not its start: a prefetched task may wait for a slot
    lease: Lease
    #: Nonzero once the task was lost by a worker without a known start: its
    #: start must then be recorded (``record_start``) before it runs.
    recorded_start: int = 0


@dataclass(slots=True)  # one per task on the hot path: see ClaimedTask
class Outcome:
    """How a run ended (read-only by convention). ``status`` is succeeded,
    failed or cancelled; or queued with ``retry_at`` set, to run again after a
    failure."""

    status: str
    result: bytes | None = None
    error: str | None = None
    traceback: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class Progress:
    """The latest progress a running task reported (``sitq.current_task()``):
    ``done`` of ``total`` (None: unknown) with an optional ``message``, stored at
    ``updated_at`` (backend clock; within about half a second of the report)."""

    done: float
    total: float | None
    message: str | None
    updated_at: float

    @property
    def fraction(self) -> float | None:
        """``done / total`` clamped to [0, 1]; None without a (positive) total."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


def _number(value: Any) -> Any:
    """A stored progress number: an int when it is whole (``done`` is usually a count)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def stored_progress(row: Sequence[Any]) -> Progress | None:
    """A Progress from stored (done, total, message, updated_at), None if never reported."""
    if row[3] is None:
        return None
    done = _number(row[0])
    return Progress(done, None if row[1] is None else _number(row[1]), row[2], float(row[3]))


class ProgressReport(NamedTuple):
    """The latest progress of a task a worker holds, for ``Backend.report_progress``."""

    lease: Lease
    done: float
    total: float | None
    message: str | None


@dataclass(frozen=True)
class TaskRecord:
    """Everything stored about one task. ``payload_size`` and ``result_size`` (bytes)
    are filled by ``get_tasks`` only, which can tell them without loading either."""

    id: str
    queue: str
    func_name: str
    status: str
    priority: int
    attempts: int
    max_retries: int
    enqueued_at: float
    available_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    result: bytes | None
    error: str | None
    traceback: str | None
    payload: bytes | None = None
    payload_size: int | None = None
    result_size: int | None = None
    #: Held by worker ``worker_id`` (prefetched), which has not started it yet:
    #: ``status`` then reads 'queued'.
    claimed: bool = False
    #: The latest progress its run reported (None before any report).
    progress: Progress | None = None


#: The status a task reports, as SQL: a claimed task that has not started is queued.
STATUS_SQL = "CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END"


#: A row without the payload and sizes (those are read by ``get_tasks`` only).
_NO_EXTRAS = (None, None, None)


def task_record(row: Sequence[Any]) -> TaskRecord:
    """A TaskRecord from a row of the task columns (id, queue, func_name, status,
    ..., started_at at index 9, ..., traceback, then the four progress columns),
    optionally followed by the payload and the sizes. A claimed task that has not
    started reads as queued, ``claimed``.

    Built positionally, in one call: collecting a large batch builds one per task,
    so this is on the hot path of every bulk read."""
    r = row
    payload, payload_size, result_size = r[19:22] if len(r) > 19 else _NO_EXTRAS
    progress = None if r[18] is None else stored_progress(r[15:19])
    claimed = r[3] == "running" and r[9] is None
    return TaskRecord(
        r[0],
        r[1],
        r[2],
        "queued" if claimed else r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        r[14],
        payload,
        payload_size,
        result_size,
        claimed,
        progress,
    )


@dataclass(frozen=True)
class Activity:
    """What waits and runs now, as status displays show it (``Backend.activity``).

    - ``ready``: per queue, the ``available_at`` of the ready task that has waited
      longest and how many are ready (queued and due; the other queued tasks wait
      for their time). Queues with nothing due are absent.
    - ``claimed``: per (queue, worker id), the tasks a worker holds but has not
      started (prefetched); ``counts`` counts them as queued.
    - ``running``: every task now running (started, not merely claimed),
      longest-running first.
    - ``failures``: the tasks that most recently ended FAILED, newest first.
    """

    ready: dict[str, tuple[float, int]]
    claimed: dict[tuple[str, str], int]
    running: list[TaskRecord]
    failures: list[TaskRecord]


@dataclass(frozen=True)
class TaskCounts:
    """What ``Backend.counts`` counted; what was not asked for is empty (None).

    - ``statuses``: tasks per (queue, status); a claimed task that has not
      started counts as queued.
    - ``finished``: per (queue, status), those with ``finished_at`` at or after
      ``finished_since`` rounded down to a whole second (the dashboard's
      "finished in the last minute"; counted by the second since schema 11).
    - ``retrying``: per queue, the queued tasks that ran before (``attempts >
      0``): waiting to be retried after a failure or a lost worker.
    """

    statuses: dict[tuple[str, str], int]
    finished: dict[tuple[str, str], int] | None
    retrying: dict[str, int]


@dataclass(frozen=True)
class LimitRecord:
    """A limit on the tasks whose ``limit_key`` is ``key``, across all workers:
    at most ``max_running`` at once, and at most ``max_starts`` started in any
    ``per_seconds`` window (None: that part is not limited). With neither part
    limited, ``Backend.set_limit`` lifts the limit."""

    key: str
    max_running: int | None
    max_starts: int | None
    per_seconds: float | None


@dataclass(frozen=True)
class ScheduleRecord:
    """A periodic schedule as stored: its spec, the due time of its latest run,
    and when it runs next (as the last worker to run it computed)."""

    name: str
    spec: str
    last_run_at: float
    next_run_at: float | None
    updated_at: float


@dataclass(frozen=True)
class WorkerRecord:
    """A worker process as the backend knows it."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None

    def alive(self, now: float, stale_after: float) -> bool:
        """Running and heard from within ``stale_after`` seconds."""
        return self.stopped_at is None and now - self.heartbeat_at <= stale_after


@dataclass(frozen=True)
class SchemaState:
    """A database's sitq schema version as stored, read without creating or
    upgrading anything (:meth:`Backend.peek_schema`)."""

    #: Where the database is, for messages (never with a password).
    database: str
    #: The version stored there; None when nothing of sitq's is there yet (a
    #: missing or empty file, a schema without sitq's tables), which connecting
    #: creates at ``current``.
    stored: int | None
    #: The version this sitq reads and writes: connecting upgrades an older
    #: ``stored`` to it, in place, and refuses a newer one.
    current: int

    @property
    def up_to_date(self) -> bool:
        """The database is at this sitq's version, so connecting changes nothing."""
        return self.stored == self.current


class UnreadablePayload(bytes):
    """Stands for a stored payload that is not bytes (a row written outside sitq,
    say a TEXT value in SQLite): the claim keeps going, and the worker fails just
    that task with ``problem``."""

    problem: str


def stored_payload(value: Any) -> bytes:
    """A claimed row's payload as bytes, or an UnreadablePayload saying why not."""
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    payload = UnreadablePayload()
    payload.problem = (
        f"the stored payload is a {type(value).__name__}, not bytes: the row was written "
        "outside sitq (a payload must be the BLOB enqueue stores); enqueue the task again"
    )
    return payload


def claimed_tasks(rows: Sequence[Sequence[Any]], worker_id: str, now: float) -> list[ClaimedTask]:
    """ClaimedTasks from a claim's rows, in claim order.

    A row is (id, queue, func_name, payload, attempts, max_retries, retry_backoff,
    timeout, enqueued_at, priority, available_at, enqueue sequence): an UPDATE's
    RETURNING has no order of its own, so the order is restored here.
    """
    try:
        ordered = sorted(rows, key=lambda r: (-r[9], r[10], r[11]))
    except TypeError:  # a column written outside sitq with the wrong type
        ordered = list(rows)
    return [
        ClaimedTask(
            id=r[0],
            queue=r[1],
            func_name=r[2],
            payload=r[3] if type(r[3]) is bytes else stored_payload(r[3]),
            attempts=r[4],
            max_retries=r[5],
            retry_backoff=r[6],
            timeout=r[7],
            enqueued_at=r[8],
            claimed_at=now,
            lease=Lease(r[0], worker_id, r[4], r[1]),
            recorded_start=r[12],
        )
        for r in ordered
    ]


_T = TypeVar("_T")


def run_to_end(awaitable: Awaitable[_T], suspended: str) -> _T:
    """Drive ``awaitable`` to its end on the calling thread, without an event loop:
    for coroutines that never suspend (a blocking driver's writes, a backend
    transaction run whole on its database thread). One that does suspend is
    closed, and a RuntimeError says ``suspended``."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    steps.close()
    raise RuntimeError(suspended)


_sequence = itertools.count()


def text_task_ids(count: int) -> list[str]:
    """``count`` text ids, for a backend that stores ids as text: one clock read
    and one read of random bytes.

    12 hex digits of milliseconds, 6 of a per-process sequence, 14 random: ids
    of one process sort in the order they were made, so a batch appends to the
    end of the primary-key index instead of splitting pages all over it.
    """
    prefix = f"{time.time_ns() // 1_000_000:012x}"
    randomness = os.urandom(7 * count).hex()
    return [
        f"{prefix}{next(_sequence) & 0xFFFFFF:06x}{randomness[i : i + 14]}"
        for i in range(0, 14 * count, 14)
    ]


class TaskWriter(Protocol):
    """What the enqueue path stores tasks through: a :class:`Backend`, or a
    :class:`BorrowedConnection` (an application's connection, in its transaction)."""

    def now(self) -> float:
        """The backend's clock, unix seconds."""

    def describe(self) -> str:
        """Where the tasks go, for messages (never includes secrets)."""

    def task_ids(self, count: int) -> list[str] | None:
        """See :meth:`Backend.task_ids`."""

    async def reserve_task_ids(self, count: int) -> list[str]:
        """See :meth:`Backend.reserve_task_ids`."""

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store ``tasks`` together (see :meth:`Backend.enqueue`)."""

    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """See :meth:`Backend.enqueue_unique`."""

    async def enqueue_dependent(
        self, tasks: Sequence[NewTask], dependencies: Sequence[Dependency]
    ) -> None:
        """See :meth:`Backend.enqueue_dependent`."""


class BorrowedConnection(abc.ABC):
    """A :class:`TaskWriter` on a connection the application holds
    (:meth:`Backend.borrow`): the tasks are written inside the application's open
    transaction, with the backend's own statements, so they commit or roll back
    with the application's own rows; nothing here commits, unless ``commit``.

    Each write first checks, once, that the connection reaches this backend's
    database (else a ConfigurationError names both), and refuses a closed one.
    A write that fails leaves nothing of itself in the transaction (a savepoint
    around it), which stays usable.
    """

    #: True for a blocking driver (sqlite3, psycopg's Connection): its writes never
    #: suspend, and can be driven from plain code (``sitq.bridge.run_inline``).
    blocking: bool = False

    @abc.abstractmethod
    def now(self) -> float:
        """The backend's clock, unix seconds."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The backend's database (never includes secrets)."""

    @abc.abstractmethod
    async def prepare(self) -> None:
        """Read what the connection is checked against, on the backend's own
        connections (on the backend's event loop): before the first write."""

    def task_ids(self, count: int) -> list[str] | None:
        """Ids for new tasks without a round trip, or None: then
        :meth:`reserve_task_ids` takes them inside the application's transaction."""
        return text_task_ids(count)

    async def reserve_task_ids(self, count: int) -> list[str]:
        """``count`` ids for new tasks, reserved in the application's transaction."""
        return text_task_ids(count)

    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Write ``tasks`` in the application's transaction."""

    @abc.abstractmethod
    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """:meth:`Backend.enqueue_unique` in the application's transaction."""

    @abc.abstractmethod
    async def enqueue_dependent(
        self, tasks: Sequence[NewTask], dependencies: Sequence[Dependency]
    ) -> None:
        """:meth:`Backend.enqueue_dependent` in the application's transaction."""

    @abc.abstractmethod
    async def begin(self) -> None:
        """Open a transaction on the connection unless one is open (for a block
        that ends with :meth:`commit` or :meth:`rollback`)."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Commit the application's transaction."""

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Roll the application's transaction back."""


class Backend(abc.ABC):
    """Where tasks and results live. Subclasses implement every abstract method."""

    #: Seconds a finished task is kept when it has no result_ttl of its own.
    default_result_ttl: float = 7 * 24 * 3600.0

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the store, creating or migrating its schema. Safe to call twice."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Safe to call twice."""

    @abc.abstractmethod
    async def peek_schema(self) -> SchemaState:
        """The schema version stored in the database, read without connecting:
        nothing is created (a missing database reads as ``stored=None``) and an
        older schema is not upgraded, as :meth:`connect` would. A database that
        holds other tables than sitq's raises NotASitqDatabase."""

    def task_ids(self, count: int) -> list[str] | None:
        """Ids for ``count`` new tasks, in enqueue order, made without a round
        trip; None when more must be reserved first (:meth:`reserve_task_ids`).

        A producer makes a task's id before storing it (a signed payload is bound
        to it; a composition's tasks name each other). The default: random text
        ids that sort by time. A backend whose ids are its rows' integer keys
        hands out blocks it reserved in the database (SQLite)."""
        return text_task_ids(count)

    async def reserve_task_ids(self, count: int) -> list[str]:
        """``count`` ids for new tasks, in enqueue order, reserving more in the
        database if the backend must; each is handed out once, ever."""
        return text_task_ids(count)

    def reserve_task_ids_blocking(self, count: int) -> list[str] | None:
        """:meth:`reserve_task_ids` from plain code on the calling thread, or None
        if this backend has no such path (then the caller runs the coroutine)."""
        return None

    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store ``tasks`` in one transaction and wake waiting workers."""

    def enqueue_blocking(self, tasks: Sequence[NewTask]) -> bool:
        """Optionally store ``tasks`` synchronously from plain code (for
        SyncTaskQueue); return False if this backend has no such path."""
        return False

    @abc.abstractmethod
    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[ClaimedTask]:
        """Atomically take up to ``limit`` ready tasks (or expired leases)."""

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """When (on :meth:`now`'s clock) work in ``queues`` may next become
        claimable with no wake-up to say so: the earliest time of a queued task
        (a delayed one, a retry) or of a lease's expiry (its task is reclaimed
        then). None: nothing waits. A paused queue's tasks do not count (resuming
        wakes the workers); nor does a task under a full concurrency limit, if the
        finish of a task claimed under a limit (``Lease.limited``) wakes the
        workers. A rate limit with no starts left is due when its window moves.
        A worker that found nothing to claim looks again then.
        This default knows nothing, so it answers "now"."""
        return self.now()

    @abc.abstractmethod
    async def heartbeat(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> set[str]:
        """Renew the worker's liveness and its leases; return ids asked to cancel."""

    @abc.abstractmethod
    async def finish(
        self,
        items: Sequence[tuple[Lease, Outcome]],
        started: Sequence[tuple[Lease, float]] = (),
    ) -> list[bool]:
        """Record outcomes in one transaction; each applies only if its lease holds.

        ``started`` holds start marks: when the function of a held task began. A
        mark of a task among ``items`` is stored as its ``started_at`` with the
        outcome; the others (tasks still running) are written in the same
        transaction, each only while its lease holds, and make them read as
        running. Returns, per item, whether its outcome applied. A lease given
        twice in one call ends its task once, with one of its outcomes (which one,
        and what is returned for each, is not defined: a worker gives each once)."""

    @abc.abstractmethod
    async def record_start(self, lease: Lease) -> bool:
        """Record, while ``lease`` holds, that its task is starting now (its
        ``started_at`` is set): if its worker is lost from here on, the attempt
        counts toward the task's limit.
        A task whose worker is lost before any recorded start (prefetched, or
        started unrecorded) goes back to the queue with its attempt not counted,
        and its next claim says (``ClaimedTask.recorded_start``) to record its
        start before running it. False if the lease no longer holds."""

    @abc.abstractmethod
    async def release(self, leases: Sequence[Lease]) -> int:
        """Give tasks back to the queue without counting the attempt (a task
        asked to cancel meanwhile ends cancelled instead)."""

    @abc.abstractmethod
    async def get_tasks(
        self, task_ids: Sequence[str], *, with_payload: bool = False, with_result: bool = True
    ) -> dict[str, TaskRecord]:
        """The stored records of the given ids; unknown ids are absent. The payload is
        loaded only ``with_payload``, the result unless ``with_result=False`` (the
        dashboard reads a big one only when asked); their sizes always."""

    @abc.abstractmethod
    async def cancel(self, task_id: str) -> str | None:
        """Cancel a task. Returns 'cancelled' (was queued), 'requested' (held by a
        worker, started or not: that worker is woken ("cancels") to stop it, or, if
        it has not started it yet, to end it cancelled unless it starts first),
        'finished' (too late), or None (no such task). A held row is never
        cancelled here: its worker would still run it."""

    @abc.abstractmethod
    async def retry(
        self, task_ids: Sequence[str] | None = None, queue: str | None = None
    ) -> list[str]:
        """Queue failed or cancelled tasks again: those of ``task_ids``, or every
        failed one when it is None; only of ``queue`` if given. Return the ids
        this call queued again."""

    @abc.abstractmethod
    async def counts(
        self, *, statuses: bool = True, finished_since: float | None = None, retrying: bool = False
    ) -> TaskCounts:
        """Count the tasks (see :class:`TaskCounts`): per (queue, status) unless
        ``statuses=False``; with ``finished_since``, also those finished since then
        (by whole seconds), from the same snapshot; with ``retrying``, the queued
        tasks waiting for a retry. None of it scans the finished tasks."""

    @abc.abstractmethod
    async def activity(self, failures: int) -> Activity:
        """What waits and runs now, all read from one snapshot of the store (see
        :class:`Activity`), with the ``failures`` tasks that most recently ended
        FAILED (none when 0)."""

    @abc.abstractmethod
    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a worker that has started."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Mark a worker stopped."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerRecord]:
        """Every known worker, newest first."""

    @abc.abstractmethod
    async def prune(self) -> int:
        """Delete finished tasks whose retention has ended; return how many."""

    @abc.abstractmethod
    async def purge(
        self, statuses: Sequence[str], queue: str | None = None, older_than: float | None = None
    ) -> int:
        """Delete tasks in ``statuses`` (finished ``older_than`` seconds ago, if given).
        "queued" means the stored status: a task a worker has claimed but not
        started (it reads queued) is held, and is not deleted."""

    # -- unique jobs, limits, pauses, schedules --------------------------------

    @abc.abstractmethod
    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """Insert ``task`` (whose ``unique_key`` is set) unless a queued or running
        task holds the key. Returns (id, True) if inserted, else (that task's id,
        False)."""

    @abc.abstractmethod
    async def set_limit(self, limit: LimitRecord) -> bool:
        """Create or replace the limit for ``limit.key``, or lift it if ``limit``
        limits nothing; claims honour it at once. Returns whether the key had a
        limit before."""

    @abc.abstractmethod
    async def list_limits(self) -> list[LimitRecord]:
        """Every limit, by key."""

    @abc.abstractmethod
    async def set_paused(self, queue: str, paused: bool) -> bool:
        """Stop claims from ``queue`` (tasks can still be enqueued), or let them
        take from it again; returns whether that changed anything."""

    @abc.abstractmethod
    async def paused_queues(self) -> list[str]:
        """The paused queues, by name."""

    @abc.abstractmethod
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
        """Record the run of schedule ``name`` due at ``due`` and enqueue ``task``
        for it, in one transaction, unless a run at or after ``due`` is already
        recorded (then nothing changes and it returns False). With ``task`` None it
        only records the time (skipped runs). ``first``: record the schedule only
        if no worker has yet (its first sighting; never moves a recorded time)."""

    @abc.abstractmethod
    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule seen by a worker, by name."""

    def now(self) -> float:
        """The backend's clock, unix seconds."""
        return time.time()

    async def wait_for_change(self, kind: WakeKind, timeout: float) -> None:
        """Return when ``kind`` ("tasks" enqueued, "results" written, or "cancels"
        asked of held tasks) may have changed, or after ``timeout`` seconds. A hint
        only: callers re-check. A wait for "tasks" returns within ``DEAF_POLL``
        seconds while the backend cannot hear wake-ups (idle workers poll then);
        the others keep their timeout (their callers poll on their own terms)."""
        await asyncio.sleep(timeout)

    def describe(self) -> str:
        """Where this backend stores data, for messages (never includes secrets)."""
        return type(self).__name__

    # -- the application's own transaction ----------------------------------

    def borrow(self, connection: Any) -> BorrowedConnection:
        """A writer on ``connection``, a database connection the application
        holds, writing inside its open transaction (``TaskQueue.using``)."""
        raise ConfigurationError(
            f"{self.describe()} cannot enqueue on an application's connection: use queue.enqueue"
        )

    def wake_workers(self) -> None:
        """Wake the idle workers of this database now, for tasks committed outside
        sitq's own transactions (``TaskQueue.wake_workers``). Nothing by default:
        a backend whose wake-ups are transactional has sent them at the commit."""
        return None

    # -- bulk status ------------------------------------------------------------

    @abc.abstractmethod
    async def count_statuses(self, task_ids: Sequence[str]) -> dict[str, int]:
        """Number of the given (distinct) tasks per status, in one query; unknown
        ids are not counted."""

    @abc.abstractmethod
    async def task_statuses(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The status of each given task, in one query; unknown ids are absent."""

    @abc.abstractmethod
    async def cancel_queued(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel those of the tasks that are still queued (running and finished ones
        are left alone, and so are claimed ones that have not started: their
        worker holds them), in one statement; return the ids cancelled."""

    # -- progress -----------------------------------------------------------------

    @abc.abstractmethod
    async def report_progress(self, reports: Sequence[ProgressReport]) -> int:
        """Store the latest progress of running tasks, in one write, and wake the
        watchers ("progress"). A report applies only while its lease holds (same
        worker, same attempt, still running): one for a finished task, or one whose
        lease was lost, is ignored. Returns how many applied."""

    @abc.abstractmethod
    async def task_progress(
        self, task_ids: Sequence[str]
    ) -> dict[str, tuple[str, Progress | None]]:
        """Each given task's status (as ``task_statuses``) and latest progress, in
        one query; unknown ids are absent."""

    # -- dependencies ---------------------------------------------------------

    @abc.abstractmethod
    async def enqueue_dependent(
        self, tasks: Sequence[NewTask], dependencies: Sequence[Dependency]
    ) -> None:
        """Store ``tasks`` in one transaction, some waiting for others (parents
        among ``tasks`` or already stored). A dependent stays queued, not due, until
        the transaction that ends its last parent makes it due; a parent that
        fails or is cancelled cancels its "cancel" dependents, transitively, in that
        same transaction. One whose parent has already failed is stored cancelled.
        An unknown parent raises :class:`~sitq.errors.InvalidDependency`, and then
        nothing is stored. The caller has refused self-dependencies and cycles."""

    @abc.abstractmethod
    async def task_links(self, task_id: str, *, with_results: bool = False) -> TaskLinks | None:
        """``task_id``'s parents and dependents (None for an unknown id); with
        ``with_results``, also the parents' outcomes in one read (the worker's, for
        a step that takes its parents' results)."""

    # -- listings for dashboards ------------------------------------------------

    @abc.abstractmethod
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
        """One page of tasks matching every filter given, without payload, result or
        traceback. Order: newest enqueued first; ``status="failed"`` newest failure
        first (from the failures index); with ``batch_id``, the batch's order.

        Pages are keyset-paginated: pass the page's ``next_cursor`` (opaque) back as
        ``cursor``. At most ``scan_limit`` tasks are examined per call, so a page is
        fast however rare the matches: it may hold fewer than ``limit`` tasks (even
        none) and still have a ``next_cursor``. ``next_cursor`` is None at the end."""

    # -- for the layers' own stores -------------------------------------------

    @abc.abstractmethod
    def store_session(self) -> StoreSession:
        """SQL on this backend's own database, for the layers that keep their own
        tables there (named batches, workflow runs): see :class:`StoreSession`."""


@dataclass(frozen=True)
class TaskPage:
    """A page of a task listing: the tasks, and the cursor of the next page (None at
    the end of the listing)."""

    tasks: list[TaskRecord]
    next_cursor: str | None
