"""What the pages show, gathered through the public API (TaskQueue and its backend)
and shaped into plain data for the templates."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from typing import Any

from sitq.backends.base import WORKER_STALE_AFTER, LimitRecord, ScheduleRecord, TaskRecord
from sitq.dashboard.history import CountHistory, QueueTrend
from sitq.dashboard.workflows import RunProgress, WorkflowItems
from sitq.headers import unwrap as unwrap_headers
from sitq.queue import TaskQueue, record_to_result
from sitq.serialization import bound_loads, payload_binding
from sitq.task import TaskStatus

STATUSES = [status.value for status in TaskStatus]
#: The most characters of an argument or result repr a task page shows.
REPR_LIMIT = 2000
#: How many failures, batches and stopped workers the overview lists.
RECENT_FAILURES = 10
RECENT_BATCHES = 10
RECENT_RUNS = 10


@dataclass
class QueueRow:
    """One queue on the overview."""

    name: str
    counts: dict[str, int]
    oldest_wait: float | None
    trend: QueueTrend
    paused: bool = False


@dataclass
class WorkerRow:
    """One worker on the overview, with what it runs now."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    heartbeat_age: float
    state: str  # alive, dead or stopped
    running: list[TaskRecord] = field(default_factory=list)


@dataclass
class BatchRow:
    """One named batch with its progress."""

    id: str
    created_at: float
    size: int
    counts: dict[str, int]

    @property
    def done(self) -> int:
        """Tasks that have finished, whatever the outcome."""
        return self.counts["succeeded"] + self.counts["failed"] + self.counts["cancelled"]

    @property
    def missing(self) -> int:
        """Tasks added but no longer stored (pruned or purged)."""
        return max(0, self.size - sum(self.counts.values()))


@dataclass
class Overview:
    """Everything on the overview page."""

    queues: list[QueueRow]
    totals: dict[str, int]
    workers: list[WorkerRow]
    stopped_workers: int
    failures: list[TaskRecord]
    batches: list[BatchRow]
    counted_ago: float
    count_interval: float
    now: float
    runs: list[RunProgress] = field(default_factory=list)
    limits: list[LimitRecord] = field(default_factory=list)
    schedules: list[ScheduleRecord] = field(default_factory=list)


async def overview(
    queue: TaskQueue, history: CountHistory, workflows: WorkflowItems, clock: float
) -> Overview:
    """The overview's data: counts (from the sampled history), paused queues, workers
    and what they run, the latest failures, the newest batches' and workflow runs'
    progress, limits and schedules."""
    backend = queue.backend
    sample = await history.latest()
    oldest = await backend.oldest_waiting()
    paused = set(await queue.paused())
    now = backend.now()
    names = sorted({name for name, _ in sample.counts} | set(oldest) | paused)
    rows: list[QueueRow] = []
    totals = dict.fromkeys(STATUSES, 0)
    for name in names:
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(sample.queue(name))
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
        waited = oldest.get(name)
        rows.append(
            QueueRow(
                name,
                counts,
                None if waited is None else max(0.0, now - waited),
                history.trend(name),
                name in paused,
            )
        )
    running = await backend.running_tasks()
    by_worker: dict[str, list[TaskRecord]] = {}
    for task in running:
        by_worker.setdefault(task.worker_id or "?", []).append(task)
    workers: list[WorkerRow] = []
    stopped = 0
    for w in await backend.list_workers():
        if w.stopped_at is not None:
            stopped += 1
            continue
        state = "alive" if w.alive(now, WORKER_STALE_AFTER) else "dead"
        workers.append(
            WorkerRow(
                w.id,
                w.hostname,
                w.pid,
                w.queues,
                w.concurrency,
                max(0.0, now - w.heartbeat_at),
                state,
                by_worker.get(w.id, []),
            )
        )
    failures = await backend.recent_failures(RECENT_FAILURES)
    batches = [
        BatchRow(b.id, b.created_at, b.size, await queue.batch_status_counts(b.id))
        for b in (await queue.list_batches())[:RECENT_BATCHES]
    ]
    return Overview(
        rows,
        totals,
        workers,
        stopped,
        failures,
        batches,
        max(0.0, clock - sample.at),
        history.interval,
        now,
        await workflows.recent(queue, RECENT_RUNS),
        await queue.limits(),
        await queue.schedules(),
    )


@dataclass
class TaskDetail:
    """Everything on a task's page."""

    record: TaskRecord
    call: str | None  # "name(args..., key=value...)", or None if not readable here
    call_error: str | None
    result: str | None
    result_error: str | None

    @property
    def can_retry(self) -> bool:
        """Failed and cancelled tasks can be queued again."""
        return self.record.status in ("failed", "cancelled")

    @property
    def can_cancel(self) -> bool:
        """Queued tasks are cancelled at once; running ones are asked to stop."""
        return self.record.status in ("queued", "running")


def bounded_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """A repr that stays readable for big values: containers are abbreviated, and
    the text is cut at ``limit`` characters."""
    shaper = reprlib.Repr()
    shaper.maxlist = shaper.maxtuple = shaper.maxset = shaper.maxdict = 20
    shaper.maxstring = shaper.maxother = 400
    shaper.maxlevel = 4
    text = shaper.repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def describe_call(queue: TaskQueue, record: TaskRecord) -> tuple[str | None, str | None]:
    """The task's call as text, loaded with the queue's serializer (after any trace
    headers); or why it cannot be shown here (e.g. its module is not importable)."""
    if record.payload is None:
        return None, "the payload is not stored"
    try:
        body = unwrap_headers(record.payload)[1]
        binding = payload_binding(record.id, record.func_name, record.queue)
        _, args, kwargs = bound_loads(queue.serializer, body, binding)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    parts = [bounded_repr(arg) for arg in args]
    parts += [f"{key}={bounded_repr(value)}" for key, value in kwargs.items()]
    return f"{record.func_name}({', '.join(parts)})", None


async def task_detail(queue: TaskQueue, task_id: str, *, with_call: bool) -> TaskDetail | None:
    """A task's record with its call (if asked: it loads the payload) and its result
    (for a succeeded task), each as a bounded repr; None for an unknown id."""
    found = await queue.backend.get_tasks([task_id], with_payload=with_call)
    record = found.get(task_id)
    if record is None:
        return None
    call, call_error = describe_call(queue, record) if with_call else (None, None)
    result = result_error = None
    if record.status == "succeeded" and record.result is not None:
        try:
            result = bounded_repr(record_to_result(record, queue.serializer).value)
        except Exception as exc:
            result_error = f"{type(exc).__name__}: {exc}"
    return TaskDetail(record, call, call_error, result, result_error)
