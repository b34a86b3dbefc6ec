"""What the pages show, gathered through the public API (``TaskQueue``: its
``overview()``, ``task_record()`` and listings) and shaped into plain data for
the templates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sitq.batch.store import BatchStore
from sitq.commands import call_of
from sitq.dashboard.history import CountHistory, QueueTrend
from sitq.dashboard.workflows import RunProgress, WorkflowItems
from sitq.display import bounded_repr
from sitq.overview import STATUSES, Overview, WorkerSummary
from sitq.queue import TaskQueue
from sitq.records import record_to_result
from sitq.serialization import SignedSerializer

if TYPE_CHECKING:
    from sitq import TaskLinks, TaskRecord

#: The largest payload or result (bytes) a page loads by itself; a bigger one is
#: loaded only on request, and never by the live refresh.
LOAD_LIMIT = 1_000_000
#: How many failures, batches and stopped workers the overview lists.
RECENT_FAILURES = 10
RECENT_BATCHES = 10
RECENT_RUNS = 10
#: The most queues the overview shows (the busiest; /queues lists them all).
QUEUES_SHOWN = 50
#: Queues and batches per page of their full listings.
QUEUES_PAGE_SIZE = 100
BATCHES_PAGE_SIZE = 50


@dataclass
class QueueRow:
    """One queue on the overview."""

    name: str
    counts: dict[str, int]
    oldest_wait: float | None
    trend: QueueTrend
    paused: bool = False
    claimed: int = 0  # of the queued, held by a worker that has not started them


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
class QueueTable:
    """Some queues' rows (with their trends), and the totals over every queue."""

    rows: list[QueueRow]
    totals: dict[str, int]
    counted_at: float  # monotonic time of the count sample
    count: int  # how many queues there are


@dataclass
class OverviewPage:
    """Everything on the overview page: the public API's overview (``view``: its
    failures, schedules, limits and clock) and what the dashboard adds to it."""

    view: Overview
    table: QueueTable  # the busiest queues
    workers: list[WorkerSummary]  # not stopped
    stopped_workers: int
    batches: list[BatchRow]
    counted_ago: float
    count_interval: float
    runs: list[RunProgress]
    more_batches: bool  # batches beyond the newest shown


async def queue_table(
    queue: TaskQueue,
    history: CountHistory,
    *,
    shown: int | None = None,
    page: int = 1,
    view: Overview | None = None,
) -> QueueTable:
    """Queue rows from the sampled counts and the overview's oldest waits, paused
    queues and claimed tasks, with totals over every queue.

    ``shown``: only the ``shown`` busiest (paused first, then most waiting, then
    most failed), in name order; else page ``page`` of all queues by name.
    Trends are computed for the returned rows only. ``view``: an overview read
    already (else one is read, without counting: the counts are the samples).
    """
    sample = await history.latest()
    if view is None:
        view = await queue.overview(failures=0, counts=False)
    oldest = {n: q.oldest_wait for n, q in view.queues.items() if q.oldest_wait is not None}
    paused = set(view.paused)
    names = sorted(set(sample.by_queue) | set(oldest) | paused)
    zeros = dict.fromkeys(STATUSES, 0)
    counts_of = {name: {**zeros, **sample.by_queue.get(name, {})} for name in names}
    totals = {status: sum(c[status] for c in counts_of.values()) for status in STATUSES}
    if shown is not None:

        def busy(name: str) -> tuple[bool, int, int, str]:
            c = counts_of[name]
            return (name not in paused, -(c["queued"] + c["running"]), -c["failed"], name)

        picked = sorted(sorted(names, key=busy)[:shown])
    else:
        start = (page - 1) * QUEUES_PAGE_SIZE
        picked = names[start : start + QUEUES_PAGE_SIZE]
    rows = [
        QueueRow(
            name,
            counts_of[name],
            oldest.get(name),
            history.trend(name),
            name in paused,
            view.queues[name].claimed if name in view.queues else 0,
        )
        for name in picked
    ]
    return QueueTable(rows, totals, sample.at, len(names))


async def batch_rows(queue: TaskQueue, limit: int, offset: int = 0) -> list[BatchRow]:
    """Up to ``limit`` named batches, newest first after ``offset``, with progress."""
    batches = BatchStore.of(queue)
    return [
        BatchRow(b.id, b.created_at, b.size, await batches.batch_status_counts(b.id))
        for b in await batches.list_batches(limit=limit, offset=offset)
    ]


async def overview(
    queue: TaskQueue, history: CountHistory, workflows: WorkflowItems, clock: float
) -> OverviewPage:
    """The overview's data: counts (from the sampled history) of the busiest queues,
    workers and what they run, the latest failures, the newest batches' and
    workflow runs' progress, limits and schedules. What it costs barely grows with
    what it does not show: a queue beyond ``QUEUES_SHOWN`` costs a few dictionary
    operations, and batches beyond the newest are not read."""
    view = await queue.overview(failures=RECENT_FAILURES, counts=False)
    table = await queue_table(queue, history, shown=QUEUES_SHOWN, view=view)
    workers = [w for w in view.workers if w.state != "stopped"]
    # One more than shown, to know whether to link to the full list.
    batches = await batch_rows(queue, RECENT_BATCHES + 1)
    return OverviewPage(
        view,
        table,
        workers,
        len(view.workers) - len(workers),
        batches[:RECENT_BATCHES],
        max(0.0, clock - table.counted_at),
        history.interval,
        await workflows.recent(queue, RECENT_RUNS),
        more_batches=len(batches) > RECENT_BATCHES,
    )


@dataclass
class TaskDetail:
    """Everything on a task's page.

    The call and the result are loaded (unpickled) only when it is safe and cheap:
    signed (verified before a byte is unpickled) and at most ``LOAD_LIMIT`` bytes;
    else only on an explicit request (``revealed``: a POST with the page's CSRF
    token), as ``sitq inspect --show-args`` asks for it.
    """

    record: TaskRecord
    call: str | None  # "name(args..., key=value...)", or None if not loaded
    call_error: str | None  # why it could not be loaded (when it was tried)
    result: str | None
    result_error: str | None
    signed: bool = False  # payloads are signed with this dashboard's key
    revealed: bool = False  # loaded on request
    links: TaskLinks | None = None  # its parents and dependents (dependencies)

    @property
    def can_retry(self) -> bool:
        """Failed and cancelled tasks can be queued again."""
        return self.record.status in ("failed", "cancelled")

    @property
    def can_cancel(self) -> bool:
        """Queued tasks are cancelled at once; running ones are asked to stop."""
        return self.record.status in ("queued", "running")

    @property
    def has_result(self) -> bool:
        """A succeeded task with a stored result."""
        return self.record.status == "succeeded" and bool(self.record.result_size)

    @property
    def result_too_big(self) -> bool:
        """Its result is over what a page loads by itself."""
        return (self.record.result_size or 0) > LOAD_LIMIT

    @property
    def call_too_big(self) -> bool:
        """Its payload is over what a page loads by itself."""
        return (self.record.payload_size or 0) > LOAD_LIMIT


def _shown(load: Callable[[], str]) -> tuple[str | None, str | None]:
    """What ``load`` returns, or why it failed (e.g. a module not importable here)."""
    try:
        return load(), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def task_detail(
    queue: TaskQueue, task_id: str, *, with_call: bool, reveal: bool = False
) -> TaskDetail | None:
    """A task's record, with its call (``with_call``) and its result (succeeded
    tasks) as bounded reprs where they may be loaded (see :class:`TaskDetail`;
    ``reveal``: on explicit request); None for an unknown id."""
    # First the record with the sizes only: nothing big is read until allowed.
    record = await queue.task_record(task_id, result=False)
    if record is None:
        return None
    signed = isinstance(queue.serializer, SignedSerializer)
    loadable = reveal or signed

    def allowed(size: int | None) -> bool:
        return loadable and size is not None and (reveal or size <= LOAD_LIMIT)

    load_call = with_call and allowed(record.payload_size)
    load_result = record.status == "succeeded" and allowed(record.result_size)
    if load_call or load_result:
        found = await queue.task_record(task_id, payload=load_call, result=load_result)
        record = found or record
    call, call_error = (
        _shown(lambda: call_of(record, queue.serializer)) if load_call else (None, None)
    )
    result = result_error = None
    if load_result and record.result is not None:
        result, result_error = _shown(
            lambda: bounded_repr(record_to_result(record, queue.serializer).value)
        )
    links = await queue.task_links(task_id)
    return TaskDetail(record, call, call_error, result, result_error, signed, reveal, links)
