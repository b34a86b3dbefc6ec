"""Workflow runs on the dashboard: each run's steps with their items' progress, and
the failed items with their error, read through TaskQueue's workflow methods.

A step's progress is counted from its items (``list_workflow_items``: the
public API has no per-status count), so a step of 50,000 items costs a read of
50,000 small rows. What was counted is kept: a step that has ended, or whose
run has ended, is read again only when its stored state changes (a resume),
and a step still running is read again only after ten times what its last read
took (as the task counts are, see ``history``), so a watched dashboard spends
at most a tenth of its time counting items.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sitq.queue import TaskQueue
from sitq.workflow.store import (
    WorkflowItemRecord,
    WorkflowRunRecord,
    WorkflowStepRecord,
    WorkflowStore,
)

#: Item statuses in the order a progress bar draws them.
ITEM_STATUSES = ("succeeded", "failed", "running", "pending")
#: The failed items kept (and listed) per step, the first by index.
MAX_FAILURES_KEPT = 250
#: The most characters of a failed item's error and preview kept.
ERROR_CHARS = 500
PREVIEW_CHARS = 120
#: Steps whose counts are remembered (least recently shown dropped first).
CACHED_STEPS = 256
#: A running step is read again after this multiple of what its last read took.
COST_FACTOR = 10.0


@dataclass(frozen=True)
class FailedItem:
    """A failed item of a step, as listed on a run's page."""

    step: str
    index: int
    preview: str | None
    attempts: int
    error: str
    task_id: str | None
    ran_on: str | None
    finished_at: float | None


@dataclass(frozen=True)
class ItemSnapshot:
    """What a read of a step's items found: counts by status and the first failures."""

    counts: dict[str, int]
    failures: tuple[FailedItem, ...]
    read_at: float  # monotonic
    cost: float  # seconds the read took


@dataclass
class RecordedStepProgress:
    """A begun step of a run with its items' progress, as recorded in the database
    (what a running workflow reports live is :class:`sitq.workflow.StepProgress`)."""

    record: WorkflowStepRecord
    counts: dict[str, int]
    failures: tuple[FailedItem, ...] = ()

    @property
    def name(self) -> str:
        """The step's name."""
        return self.record.name

    @property
    def size(self) -> int:
        """Its items (what the progress bar spans)."""
        return max(self.record.total, sum(self.counts.values()))

    @property
    def done(self) -> int:
        """Items that have ended, succeeded or failed."""
        return self.counts["succeeded"] + self.counts["failed"]

    @property
    def failed(self) -> int:
        """Items that failed (all of them, listed or not)."""
        return self.counts["failed"]


@dataclass
class RunProgress:
    """A workflow run and its begun steps."""

    record: WorkflowRunRecord
    status: str  # as stored, or "interrupted" when its process is gone
    steps: list[RecordedStepProgress] = field(default_factory=list)

    @property
    def failures(self) -> list[FailedItem]:
        """The kept failed items of every step, in step order."""
        return [failure for step in self.steps for failure in step.failures]

    @property
    def failed(self) -> int:
        """Failed items over all steps (listed or not)."""
        return sum(step.failed for step in self.steps)

    @property
    def unlisted_failures(self) -> int:
        """Failed items beyond those kept per step."""
        return self.failed - len(self.failures)


def shown_status(run: WorkflowRunRecord) -> str:
    """The run's status; "interrupted" for a run still marked running whose process,
    on this host, is gone (as `sitq workflow status` says)."""
    gone = run.status == "running" and run.process_alive() is False
    return "interrupted" if gone else run.status


def _cut(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _tally(
    step: str, items: list[WorkflowItemRecord]
) -> tuple[dict[str, int], tuple[FailedItem, ...]]:
    """Counts by status, and the first failures (bounded)."""
    counts = dict.fromkeys(ITEM_STATUSES, 0)
    failures: list[FailedItem] = []
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
        if item.status == "failed" and len(failures) < MAX_FAILURES_KEPT:
            failures.append(
                FailedItem(
                    step,
                    item.index,
                    _cut(item.item_preview, PREVIEW_CHARS),
                    item.attempts,
                    _cut(item.error, ERROR_CHARS) or "(no error recorded)",
                    item.task_id,
                    item.ran_on,
                    item.finished_at,
                )
            )
    return counts, tuple(failures)


class WorkflowItems:
    """Counts of each step's items, remembered as the module's docstring says."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._kept: OrderedDict[tuple[str, str], tuple[tuple[object, ...], ItemSnapshot]] = (
            OrderedDict()
        )

    async def progress(
        self, queue: TaskQueue, run: WorkflowRunRecord, step: WorkflowStepRecord
    ) -> RecordedStepProgress:
        """The step's progress, read again only if it may have changed and is due."""
        key = (run.id, step.name)
        state = (run.status, run.updated_at, step.status, step.started_at, step.finished_at)
        kept = self._kept.get(key)
        if kept is not None:
            kept_state, snapshot = kept
            settled = run.status != "running" or step.status != "running"
            due = self.clock() - snapshot.read_at >= snapshot.cost * COST_FACTOR
            if kept_state == state and (settled or not due):
                self._kept.move_to_end(key)
                return RecordedStepProgress(step, snapshot.counts, snapshot.failures)
        started = self.clock()
        items = await WorkflowStore.of(queue).list_workflow_items(run.id, step.name)
        counts, failures = _tally(step.name, items)
        read_at = self.clock()
        snapshot = ItemSnapshot(counts, failures, read_at, read_at - started)
        self._kept[key] = (state, snapshot)
        self._kept.move_to_end(key)
        while len(self._kept) > CACHED_STEPS:
            self._kept.popitem(last=False)
        return RecordedStepProgress(step, snapshot.counts, snapshot.failures)

    async def run(self, queue: TaskQueue, run: WorkflowRunRecord) -> RunProgress:
        """A run with each begun step's progress."""
        records = await WorkflowStore.of(queue).list_workflow_steps(run.id)
        steps = [await self.progress(queue, run, step) for step in records]
        return RunProgress(run, shown_status(run), steps)

    async def recent(self, queue: TaskQueue, limit: int) -> list[RunProgress]:
        """The ``limit`` newest runs, newest first, with their steps' progress."""
        runs = await WorkflowStore.of(queue).list_workflow_runs(limit)
        return [await self.run(queue, run) for run in runs]
