"""``TaskQueue.watch``: live progress and finished events for a set of tasks.

Driven by the backend's wake-ups, never by a query per task: each look reads
the status and progress of every watched, unfinished task in one query
(``Backend.task_progress``), then the records of those that finished in one
more, and waits for the next "progress" or "results" wake-up (an SQLite
datagram, a PostgreSQL NOTIFY) or for ``poll_interval`` seconds, whichever
comes first (a lost datagram costs at most that). Between two looks it pauses
at least a few times the cost of the last one, so a large watch on a busy
database does not read continuously.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from sitq.backends.base import Backend, Progress
from sitq.enqueuer import raise_translated
from sitq.errors import SitqError, TaskNotFound
from sitq.records import is_finished, record_to_result, task_status
from sitq.serialization import Serializer
from sitq.task import Result, TaskStatus

T = TypeVar("T")

#: The shortest pause between two looks, and the multiple of a look's own cost
#: paused after it (as the batch layer's collection does).
MIN_GAP = 0.01
COST_FACTOR = 4.0


@dataclass(frozen=True)
class WatchEvent:
    """Something that happened to a watched task (``TaskQueue.watch``).

    - ``kind="progress"``: the task reported progress; ``progress`` is the new value.
    - ``kind="finished"``: the task finished; ``status`` and ``result`` say how
      (``progress`` is its last report, or None). A task deleted while watched
      (purged, or pruned after its retention) finishes with both None.
    """

    task_id: str
    kind: Literal["progress", "finished"]
    progress: Progress | None = None
    status: TaskStatus | None = None
    result: Result | None = None


async def _translated(backend: Backend, read: Awaitable[T]) -> T:
    """``read``'s value; a raw database error raised as sitq's."""
    try:
        return await read
    except SitqError:
        raise
    except Exception as exc:
        raise_translated(exc, backend)
        raise


async def _wait_for_change(backend: Backend, timeout: float) -> None:
    """Return on a "progress" or "results" wake-up, or after ``timeout`` seconds."""
    waits = [
        asyncio.ensure_future(backend.wait_for_change(kind, timeout))
        for kind in ("progress", "results")
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.wait(waits)  # let the cancelled one unwind


async def watch_looks(
    backend: Backend,
    serializer: Serializer,
    task_ids: Sequence[str],
    *,
    timeout: float | None,
    poll_interval: float,
    skip_missing: bool,
) -> AsyncGenerator[list[WatchEvent], None]:
    """The events of ``task_ids``, one list per look that saw any, until all have
    finished (or ``timeout`` seconds have passed). See :meth:`sitq.TaskQueue.watch_looks`."""
    pending = list(dict.fromkeys(task_ids))
    shown: dict[str, Progress | None] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    first = True
    while pending:
        began = time.monotonic()
        states = await _translated(backend, backend.task_progress(pending))
        if first:
            first = False
            missing = [task_id for task_id in pending if task_id not in states]
            if missing and not skip_missing:
                raise TaskNotFound(missing[0])
        look: list[WatchEvent] = []
        finished: list[str] = []
        left: list[str] = []
        for task_id in pending:
            state = states.get(task_id)
            if state is None:
                if not skip_missing:  # deleted while watched
                    look.append(WatchEvent(task_id, "finished"))
                continue
            status, progress = state
            if progress is not None and progress != shown.get(task_id):
                shown[task_id] = progress
                look.append(WatchEvent(task_id, "progress", progress))
            (finished if is_finished(task_id, status) else left).append(task_id)
        if finished:
            records = await _translated(backend, backend.get_tasks(finished))
            ended = sorted(records.values(), key=lambda r: (r.finished_at or 0.0, r.id))
            for record in ended:
                status = task_status(record)
                result = record_to_result(record, serializer, status)
                look.append(WatchEvent(record.id, "finished", record.progress, status, result))
            if not skip_missing:
                gone = [task_id for task_id in finished if task_id not in records]
                look.extend(WatchEvent(task_id, "finished") for task_id in gone)
        if look:
            yield look
        pending = left
        if not pending:
            return
        now = time.monotonic()
        remaining = float("inf") if deadline is None else deadline - now
        if remaining <= 0:
            return
        gap = min(poll_interval, max(MIN_GAP, COST_FACTOR * (now - began)), remaining)
        await asyncio.sleep(gap)
        rest = min(poll_interval - gap, remaining - gap)
        if rest > 0:
            await _wait_for_change(backend, rest)


async def flatten(
    looks: AsyncGenerator[list[WatchEvent], None],
) -> AsyncGenerator[WatchEvent, None]:
    """The events of ``looks`` one at a time (``TaskQueue.watch``)."""
    try:
        async for look in looks:
            for event in look:
                yield event
    finally:
        await looks.aclose()
