"""BatchProcessor: fan a function out over many items, and collect what comes back.

One file because one class: enqueueing, finding, collecting and retrying share the
processor's queue, its last batch and the monitor behind its report, and
collecting is one poll loop (``_watch``) under collect_results, as_completed and
gather. Splitting it would mean mixins passing that state around.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from sitq import checks
from sitq.batch.errors import (
    BatchExists,
    BatchNotFound,
    BatchSizeChanged,
    BatchTimeout,
    TaskExpired,
)
from sitq.batch.progress import BatchProgress, ProgressBar
from sitq.batch.report import DEFAULT_TRACKED_TASKS, BatchReport, Monitor
from sitq.batch.store import BatchStore, StoredBatch
from sitq.errors import ConfigurationError, TaskNotFound
from sitq.queue import TaskQueue
from sitq.sync_queue import SyncTaskQueue
from sitq.task import Result

IfExists = Literal["error", "append", "resume"]

#: The shortest pause between two polls of one collection: a burst of
#: wake-ups (every finishing task sends one) must not turn into a busy loop.
MIN_POLL_GAP = 0.01
#: Polls are spaced at least this many times their own cost apart, so a big
#: collection spends at most a fifth of its time asking.
POLL_COST_FACTOR = 4.0


@dataclass
class Batch:
    """A batch's task ids, in input order; ``name`` is set for named batches.

    ``size`` counts every task the batch ever had: more than ``len(ids)`` when
    some were pruned after their ``result_ttl``. ``positions`` (for a batch
    read from the database) gives each id's position among the ``size``
    items, so the gaps are the pruned ones; None when the ids are the items
    in order. :meth:`BatchProcessor.gather` uses it to keep values in place.
    """

    ids: list[str]
    name: str | None = None
    created_at: datetime | None = None
    size: int = field(default=-1)
    positions: list[int] | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.ids)
        if self.positions is not None and len(self.positions) != len(self.ids):
            raise ValueError("a Batch needs one position per id")

    @property
    def missing_positions(self) -> list[int]:
        """The positions whose tasks are no longer stored (pruned or purged)."""
        if self.positions is None:
            return []
        held = set(self.positions)
        return [p for p in range(self.size) if p not in held]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Any:
        return iter(self.ids)


Target = Batch | str | Sequence[str]

_EPOCH = datetime.fromtimestamp(0, tz=timezone.utc)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _check_seconds(name: str, value: Any, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        hint = " (or None to wait as long as it takes)" if allow_none else ""
        raise ConfigurationError(f"{name} must be a number of seconds >= 0{hint}, got {value!r}")
    return float(value)


class BatchProcessor:
    """Chunked enqueue, bulk result collection, progress and retries for many tasks.

    :param queue: a connected :class:`~sitq.TaskQueue` (for plain code, use
        :class:`~sitq.batch.SyncBatchProcessor` with a ``SyncTaskQueue``).
    :param batch_size: items per enqueue transaction unless a call says otherwise.
    :param max_tracked_tasks: task ids the :meth:`report` follows at most (the
        newest; about 200 bytes each), so a long-lived processor's memory stays
        bounded. A result of a task no longer followed is not counted in the
        report (collecting it works the same).

    Methods that take a ``target`` accept a :class:`Batch`, a batch name (str),
    or a list of task ids; retry_failed and cancel default to the last batch
    this processor enqueued.
    """

    def __init__(
        self,
        queue: TaskQueue,
        batch_size: int = 100,
        *,
        max_tracked_tasks: int = DEFAULT_TRACKED_TASKS,
    ) -> None:
        if isinstance(queue, SyncTaskQueue):
            raise TypeError(
                "BatchProcessor needs an async TaskQueue; for a SyncTaskQueue use "
                "sitq.batch.SyncBatchProcessor(queue)"
            )
        self.queue = queue
        self.batch_size = checks.integer("batch_size", batch_size, minimum=1)
        self.last: Batch | None = None
        self._monitor = Monitor(checks.integer("max_tracked_tasks", max_tracked_tasks, minimum=1))

    def _batches(self) -> BatchStore:
        """The named batches of the queue's database (the queue must be connected)."""
        return BatchStore.of(self.queue)

    # -- enqueueing ---------------------------------------------------------

    async def enqueue_batch(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        batch_size: int | None = None,
        *,
        batch_id: str | None = None,
        if_exists: IfExists = "error",
        **options: Any,
    ) -> list[str]:
        """Enqueue one call of ``func`` per item, ``batch_size`` items per transaction.

        Each item is a tuple of positional arguments, or a single argument.
        ``options`` are task options (``queue``, ``priority``, ``max_retries``,
        ``timeout``, ``result_ttl``, ...). Returns the task ids in item order.

        With ``batch_id`` the batch is stored in the database with each chunk,
        so :meth:`open` finds it from any process later. If a batch of that
        name exists, ``if_exists`` decides: ``"error"`` raises
        :class:`BatchExists`; ``"append"`` adds these items to it; ``"resume"``
        skips as many items as the batch already has (a producer that stopped
        half-way goes on from there, given the same items in the same order) and
        returns the ids of the whole batch still stored. Producers resuming one
        batch at once each enqueue only what it lacks (every append is a
        compare-and-set on the batch's size), and each returns the whole batch.
        """
        batch = await self.submit(
            func, items, batch_size, batch_id=batch_id, if_exists=if_exists, **options
        )
        return batch.ids

    async def submit(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        batch_size: int | None = None,
        *,
        batch_id: str | None = None,
        if_exists: IfExists = "error",
        **options: Any,
    ) -> Batch:
        """Like :meth:`enqueue_batch`, returning the :class:`Batch`."""
        size = checks.integer("batch_size", batch_size or self.batch_size, minimum=1)
        if if_exists not in ("error", "append", "resume"):
            raise ConfigurationError(
                f"if_exists must be 'error', 'append' or 'resume', got {if_exists!r}"
            )
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__} {func!r:.60}")
        enqueuer = self.queue.with_options(**options) if options else self.queue
        started = time.time()
        # Resuming: the batch so far, whose size each append expects (a compare-and-set).
        resumed = None if batch_id is None else await self._claim(batch_id, if_exists)
        ids, positions = (resumed.ids, resumed.positions or []) if resumed else ([], [])
        expected = resumed.size if resumed else None
        source = itertools.islice(items, expected or 0, None)
        run = self._monitor.start(batch_id, started)
        self._monitor.enqueued(run, ids, 0.0)
        stored = 0
        raced = False  # another producer resumed the same batch meanwhile
        while chunk := list(itertools.islice(source, size)):
            began = time.perf_counter()
            new: list[str] = []
            try:
                while chunk:  # after a lost compare-and-set: again, with what is left
                    append = (
                        None if batch_id is None else self._batches().appender(batch_id, expected)
                    )
                    try:
                        new = await enqueuer.enqueue_many(func, chunk, alongside=append)
                        break
                    except BatchSizeChanged as lost:  # skip what the other producer stored
                        raced = True
                        chunk, expected = await self._skip_stored(
                            lost.batch_id, lost.expected_size, chunk, source
                        )
            except Exception as exc:
                add_note = getattr(exc, "add_note", None)  # Python 3.11+
                if stored and add_note is not None:
                    where = f" of batch {batch_id!r}" if batch_id else ""
                    resume = " (if_exists='resume' continues after them)" if batch_id else ""
                    add_note(
                        f"{stored} items{where} were enqueued before this chunk failed; "
                        f"they will run{resume}"
                    )
                raise
            if expected is not None:
                positions.extend(range(expected, expected + len(new)))
                expected += len(new)
            self._monitor.enqueued(run, new, time.perf_counter() - began)
            ids.extend(new)
            stored += len(new)
        if expected is None or batch_id is None:  # not resumed: the ids in item order
            self.last = Batch(ids, batch_id, _utc(started))
            return self.last
        if raced:  # the batch as stored, with what the others added
            mine = set(ids)
            batch = await self._as_stored(batch_id, await self._batches().get_batch(batch_id))
            ids, positions, expected = batch.ids, batch.positions or [], max(expected, batch.size)
            self._monitor.enqueued(run, [i for i in ids if i not in mine], 0.0)
        self.last = Batch(ids, batch_id, _utc(started), expected, positions)
        return self.last

    async def _claim(self, batch_id: str, if_exists: IfExists) -> Batch | None:
        """Claim the name (``"error"``), or find the batch to resume (empty if new)."""
        if if_exists == "error" and not await self._batches().create_batch(batch_id):
            record = await self._batches().get_batch(batch_id)
            raise BatchExists(batch_id, record.size if record else 0)
        if if_exists != "resume":
            return None
        return await self._as_stored(batch_id, await self._batches().get_batch(batch_id))

    async def _skip_stored(
        self, batch_id: str, expected: int, chunk: list[Any], source: Iterator[Any]
    ) -> tuple[list[Any], int]:
        """After a lost compare-and-set: the part of ``chunk`` the batch does not
        have yet (items of ``source`` it has are skipped too), and its size now."""
        record = await self._batches().get_batch(batch_id)
        size = record.size if record is not None else 0
        if size < expected:
            raise BatchSizeChanged(batch_id, expected)  # deleted or recreated meanwhile
        ahead = size - expected
        deque(itertools.islice(source, max(0, ahead - len(chunk))), maxlen=0)  # consumed
        return chunk[ahead:], size

    # -- finding batches, and how far they are --------------------------------

    async def open(self, batch_id: str) -> Batch:
        """The named batch as stored, from any process: its ids in input order.

        Tasks pruned after their ``result_ttl`` are no longer in ``ids``; the
        batch's ``positions`` and ``size`` say where the gaps are, and
        :meth:`gather` over it keeps each value at its item's position.
        Raises :class:`BatchNotFound` for an unknown name.
        """
        record = await self._batches().get_batch(batch_id)
        if record is None:
            known = [b.id for b in await self._batches().list_batches(limit=5)]
            raise BatchNotFound(batch_id, known)
        batch = await self._as_stored(batch_id, record)
        self._monitor.adopt(batch_id, record.created_at, batch.ids)
        self.last = batch
        return batch

    async def _as_stored(self, batch_id: str, record: StoredBatch | None) -> Batch:
        """The batch of ``record`` (just read) as stored now; empty if there is none."""
        if record is None:
            return Batch([], batch_id, None, 0, [])
        members = await self._batches().batch_members(batch_id)
        positions = [position for position, _ in members]
        # Members appended since the record was read lie past its size.
        size = max(record.size, positions[-1] + 1 if positions else 0)
        ids = [task_id for _, task_id in members]
        return Batch(ids, batch_id, _utc(record.created_at), size, positions)

    async def batches(self) -> list[Batch]:
        """Every named batch, newest first (ids not loaded: use :meth:`open`)."""
        return [
            Batch([], record.id, _utc(record.created_at), record.size)
            for record in await self._batches().list_batches()
        ]

    async def delete(self, batch_id: str) -> bool:
        """Forget a named batch, so its name can be used again (its tasks and results
        stay); False if unknown."""
        return await self._batches().delete_batch(batch_id)

    async def _batch(self, target: Target | None) -> Batch:
        """The batch a method's ``target`` means (see the class docstring)."""
        if isinstance(target, Batch):
            return target
        if isinstance(target, str):
            return await self.open(target)
        if target is not None:
            ids = list(target)
            if not all(isinstance(task_id, str) for task_id in ids):
                raise TypeError("task ids must be strings (as enqueue_batch returned them)")
            return Batch(ids)
        if self.last is None:
            raise ConfigurationError(
                "no batch given and this processor has not enqueued one yet: pass a "
                "Batch, a batch name or a list of task ids"
            )
        return Batch(self.last.ids)  # its ids only, as a list of them would be

    async def progress(self, target: Target | None = None) -> BatchProgress:
        """Counts of total, queued, running, succeeded, failed, cancelled and missing
        tasks, in one query (two for a named batch)."""
        name = target.name if isinstance(target, Batch) else target
        if isinstance(name, str):
            record = await self._batches().get_batch(name)
            if record is None:
                raise BatchNotFound(name)
            counts = await self._batches().batch_status_counts(name)
            return BatchProgress.from_counts(record.size, counts)
        ids = list(dict.fromkeys((await self._batch(target)).ids))
        return BatchProgress.from_counts(len(ids), await self.queue.status_counts(ids))

    # -- collecting -------------------------------------------------------------

    async def _watch(
        self,
        target: Target | None,
        timeout: float | None,
        poll_interval: float,
        progress: bool,
        seen: dict[str, Result],
        *,
        strict: bool = True,
    ) -> AsyncGenerator[Result, None]:
        """Yield the target's Results as they finish (in finishing order), each also
        put in ``seen``, until all have finished or are gone, or ``timeout`` runs
        out; then, if ``strict``, raise :class:`BatchTimeout` if some are unfinished.

        Driven by :meth:`TaskQueue.watch`: each look is one query for every pending
        id plus a bulk read of the newly finished ones, never a query per id; the
        sub-tasks' own progress reports move the bar between finishes.
        """
        timeout = _check_seconds("timeout", timeout, allow_none=True)
        interval = _check_seconds("poll_interval", poll_interval, allow_none=False) or MIN_POLL_GAP
        batch = await self._batch(target)
        ids = list(dict.fromkeys(batch.ids))
        pending = set(ids)
        bar = ProgressBar(progress, len(ids), batch.name)
        looks = self.queue.watch_looks(
            ids, timeout=timeout, poll_interval=interval, skip_missing=True
        )
        try:
            async for look in looks:
                # A look's events at once: observing and drawing per result cost
                # more than reading them (50,000 results).
                results: list[Result] = []
                for event in look:
                    if event.kind == "progress":
                        if event.progress is not None:
                            bar.report(event.task_id, event.progress)
                        continue
                    pending.discard(event.task_id)
                    if event.result is not None:  # None: no longer stored, not waited for
                        results.append(event.result)
                if not results:
                    continue
                self._monitor.observe(results)
                bar.advance(results)
                for result in results:
                    seen[result.task_id] = result
                    yield result
        finally:
            bar.close()
            await looks.aclose()
        if strict and pending:  # those that finished since the last poll are not late
            statuses = await self.queue.statuses(list(pending))
            late = [i for i in ids if i in pending and i in statuses and not statuses[i].finished]
            if late:
                raise BatchTimeout(late, dict(seen), timeout or 0.0)

    async def collect_results(
        self,
        task_ids: Target | None = None,
        timeout: float | None = 30.0,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> dict[str, Result]:
        """Every finished task's Result (succeeded, failed or cancelled), by id.

        Waits up to ``timeout`` seconds (None: until all have finished); ids not
        finished by then are absent, as are ids no longer stored. Polls at most
        every ``poll_interval`` seconds, sooner when results are written.
        """
        seen: dict[str, Result] = {}
        async for _ in self._watch(task_ids, timeout, poll_interval, progress, seen, strict=False):
            pass
        return seen

    async def as_completed(
        self,
        task_ids: Target | None = None,
        timeout: float | None = None,
        *,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> AsyncGenerator[Result, None]:
        """Yield each task's Result as it finishes (in finishing order).

        Raises :class:`BatchTimeout` if some have not finished within ``timeout``.
        Ids no longer stored are skipped.
        """
        async for result in self._watch(task_ids, timeout, poll_interval, progress, {}):
            yield result

    async def gather(
        self,
        task_ids: Target | None = None,
        *,
        timeout: float | None = None,
        progress: bool = True,
        return_exceptions: bool = False,
        poll_interval: float = 0.5,
    ) -> list[Any]:
        """The tasks' values in input order, waiting for all of them.

        A failed or cancelled task raises its :class:`~sitq.TaskFailed` as soon as
        it is seen (the other tasks keep running), unless ``return_exceptions``,
        which puts the TaskFailed in its place. A task no longer stored gives
        :class:`~sitq.TaskNotFound` the same way. Raises :class:`BatchTimeout`
        if some have not finished within ``timeout``.

        Over a named batch (its name, or a :class:`Batch` from :meth:`open` or a
        resume) the list has one entry per item the batch ever had, in input
        order: a position whose task was pruned after its ``result_ttl`` holds a
        :class:`~sitq.batch.TaskExpired` (a ``TaskNotFound``) with
        ``return_exceptions``, and raises it at once without.
        """
        batch = await self._batch(task_ids)
        expired = batch.missing_positions
        if expired and not return_exceptions:
            raise TaskExpired(batch.name or "", expired[0])
        seen: dict[str, Result] = {}
        async for result in self._watch(batch, timeout, poll_interval, progress, seen):
            if not return_exceptions:
                result.unwrap()  # a failure raises its TaskFailed, with the remote traceback
        values: list[Any] = []
        for task_id in batch.ids:
            try:
                found = seen.get(task_id)
                if found is None:
                    raise TaskNotFound(task_id)
                values.append(found.unwrap())
            except Exception as exc:
                if not return_exceptions:
                    raise
                values.append(exc)
        if batch.positions is None:
            return values
        placed: list[Any] = [TaskExpired(batch.name or "", p) for p in range(batch.size)]
        for position, value in zip(batch.positions, values, strict=True):
            placed[position] = value
        return placed

    async def map(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        *,
        batch_size: int | None = None,
        timeout: float | None = None,
        progress: bool = True,
        return_exceptions: bool = False,
        batch_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """Run ``func`` over ``items`` on the workers; the values in input order.

        :meth:`enqueue_batch` then :meth:`gather`: a failed item raises its
        TaskFailed, or with ``return_exceptions=True`` gives it in its place
        (then :meth:`retry_failed` reruns just those). ``options`` are task
        options (``{"max_retries": 2, "timeout": 60}``); ``timeout`` here bounds
        the wait for the whole batch.
        """
        batch = await self.submit(func, items, batch_size, batch_id=batch_id, **dict(options or {}))
        return await self.gather(
            batch, timeout=timeout, progress=progress, return_exceptions=return_exceptions
        )

    # -- retry, cancel, report ----------------------------------------------

    async def retry_failed(self, task_ids: Target | None = None) -> list[str]:
        """Queue the failed tasks of the batch again (succeeded, cancelled and
        unfinished ones are left alone); return their ids. Their ids stay the
        same, so collecting the batch again picks up their new results."""
        ids = (await self._batch(task_ids)).ids
        statuses = await self.queue.statuses(ids)
        failed = [i for i in dict.fromkeys(ids) if statuses.get(i) == "failed"]
        if failed:
            self._monitor.retried(failed)
            await self.queue.retry_many(failed)
        return failed

    async def cancel(self, task_ids: Target | None = None) -> list[str]:
        """Cancel the tasks of the batch that have not started (running ones finish);
        return the ids cancelled."""
        return await self.queue.cancel_many((await self._batch(task_ids)).ids)

    def report(self) -> BatchReport:
        """Measured figures of this processor's batches: batches, tasks, wall time,
        tasks/s, mean batch time, error rate (see :class:`BatchReport`)."""
        return self._monitor.report()
