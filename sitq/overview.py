"""The queue's overview, built in one place: what ``sitq status``, ``TaskQueue.stats``
and the dashboard's overview and ``/metrics`` show.

:func:`build_overview` reads the storage contract's summary queries once and
shapes them into frozen records; every surface renders from the result, so the
three no longer compute "alive", "ready" or "delayed" each in its own way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sitq.backends.base import WORKER_STALE_AFTER as WORKER_STALE_AFTER
from sitq.backends.base import (
    Backend,
    LimitRecord,
    ScheduleRecord,
    TaskRecord,
    WorkerRecord,
)
from sitq.task import TaskStatus

STATUSES = tuple(status.value for status in TaskStatus)

#: Between a supervisor's id and its child's process id in the child's worker id.
SUPERVISED = "/"


def supervised_name(supervisor: str, pid: int) -> str:
    """The worker id of a child of `sitq worker --processes N`: ``SUPERVISOR/PID``
    (read back by :attr:`WorkerSummary.supervisor`)."""
    return f"{supervisor}{SUPERVISED}{pid}"


@dataclass(frozen=True)
class QueueSummary:
    """One queue in the overview.

    ``counts`` has every :class:`TaskStatus` value as a key (all zero when the
    overview was built without counting, ``counts=False``). Of the queued tasks,
    ``ready`` are due now, ``claimed`` are held by a worker that has not started
    them, and ``delayed`` wait for their time (a delay, an eta or a backoff).
    ``oldest_wait`` is how long, in seconds, the longest-waiting ready task has
    waited (None when nothing is ready).
    """

    name: str
    counts: Mapping[str, int]
    ready: int
    claimed: int
    oldest_wait: float | None
    paused: bool

    @property
    def delayed(self) -> int:
        """Queued tasks neither due nor held (0 when the overview did not count)."""
        return max(0, self.counts.get("queued", 0) - self.ready - self.claimed)


@dataclass(frozen=True)
class WorkerSummary:
    """One worker in the overview: its record, its state (``alive``, ``dead``: no
    heartbeat for ``WORKER_STALE_AFTER`` seconds, or ``stopped``), how long ago it
    was heard from (seconds; negative if its clock runs ahead), the tasks it runs
    and how many it holds without having started."""

    record: WorkerRecord
    state: str
    heartbeat_age: float
    running: tuple[TaskRecord, ...] = ()
    claimed: int = 0

    @property
    def id(self) -> str:
        """The worker's id."""
        return self.record.id

    @property
    def supervisor(self) -> str | None:
        """The id of the `sitq worker --processes N` supervisor that started this
        worker (its id is ``SUPERVISOR/PID``), or None for a worker on its own."""
        supervisor, separator, _ = self.record.id.rpartition(SUPERVISED)
        return supervisor if separator and supervisor else None


@dataclass(frozen=True)
class Overview:
    """A snapshot of the queue: per queue its counts, readiness and pause; the
    workers and what each runs; the recent failures; schedules and limits.

    ``now`` is the database clock the ages were computed against. ``queues`` is
    by name, in name order. ``running`` lists every started task, longest-running
    first (a task whose worker is no longer listed is still there).
    """

    now: float
    queues: Mapping[str, QueueSummary]
    workers: tuple[WorkerSummary, ...]
    running: tuple[TaskRecord, ...]
    recent_failures: tuple[TaskRecord, ...]
    schedules: tuple[ScheduleRecord, ...]
    limits: tuple[LimitRecord, ...]
    paused: tuple[str, ...]
    counted: bool = True
    totals: Mapping[str, int] = field(default_factory=dict)

    @property
    def workers_alive(self) -> int:
        """Workers running and heard from within ``WORKER_STALE_AFTER`` seconds."""
        return sum(1 for worker in self.workers if worker.state == "alive")


def worker_state(worker: WorkerRecord, now: float) -> str:
    """``stopped``, ``alive`` or ``dead`` (no heartbeat for WORKER_STALE_AFTER seconds)."""
    if worker.stopped_at is not None:
        return "stopped"
    return "alive" if worker.alive(now, WORKER_STALE_AFTER) else "dead"


async def build_overview(backend: Backend, *, failures: int = 5, counts: bool = True) -> Overview:
    """Read the summary queries once and shape them into an :class:`Overview`.

    ``failures``: how many recent failures to read (0: none). ``counts=False``
    skips the counts (cheap since schema version 11: kept counts and the live
    tasks' indexes, not a scan of the task table), for a caller that keeps sampled
    counts of its own (the dashboard)."""
    counted = (await backend.counts()).statuses if counts else {}
    activity = await backend.activity(failures)
    ready, claimed = activity.ready, activity.claimed
    running, failed = tuple(activity.running), tuple(activity.failures)
    workers = await backend.list_workers()
    schedules = tuple(await backend.list_schedules())
    limits = tuple(await backend.list_limits())
    paused = tuple(await backend.paused_queues())
    now = backend.now()

    per_queue: dict[str, dict[str, int]] = {}
    totals = dict.fromkeys(STATUSES, 0)
    for (queue, status), n in counted.items():
        per_queue.setdefault(queue, dict.fromkeys(STATUSES, 0))[status] = n
        totals[status] = totals.get(status, 0) + n
    claimed_in: dict[str, int] = {}
    claimed_by: dict[str, int] = {}
    for (queue, worker_id), n in claimed.items():
        claimed_in[queue] = claimed_in.get(queue, 0) + n
        claimed_by[worker_id] = claimed_by.get(worker_id, 0) + n
    names = set(per_queue) | set(claimed_in) | set(ready) | set(paused)
    queues = {
        name: QueueSummary(
            name,
            per_queue.get(name) or dict.fromkeys(STATUSES, 0),
            ready[name][1] if name in ready else 0,
            claimed_in.get(name, 0),
            max(0.0, now - ready[name][0]) if name in ready else None,
            name in paused,
        )
        for name in sorted(names)
    }
    by_worker: dict[str, list[TaskRecord]] = {}
    for task in running:
        by_worker.setdefault(task.worker_id or "?", []).append(task)
    worker_rows = tuple(
        WorkerSummary(
            w,
            worker_state(w, now),
            now - w.heartbeat_at,
            tuple(by_worker.get(w.id, ())),
            claimed_by.get(w.id, 0),
        )
        for w in workers
    )
    return Overview(
        now, queues, worker_rows, running, failed, schedules, limits, paused, counts, totals
    )
