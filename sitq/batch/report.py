"""The performance report: what the batches of one processor measured."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, replace
from typing import Any

from sitq.task import Result

#: The bounds of a :class:`Monitor`: task ids followed, batches kept one by one.
DEFAULT_TRACKED_TASKS = 100_000
DEFAULT_TRACKED_BATCHES = 1_000


@dataclass
class _Run:
    """One batch as this processor saw it: aggregates, never ids."""

    name: str | None
    started_at: float  # unix seconds: when its enqueue began (or the batch was created)
    tasks: int = 0
    chunks: int = 0
    enqueue_seconds: float = 0.0
    finished: int = 0
    failed: int = 0
    last_finished_at: float | None = None
    settled: int = 0  # its tasks whose latest run has been collected


@dataclass
class _Folded:
    """Figures summed over batches: those no longer kept one by one, or (for a
    report) every batch."""

    batches: int = 0
    chunks: int = 0
    tasks: int = 0
    finished: int = 0
    failed: int = 0
    enqueue_seconds: float = 0.0
    enqueued: int = 0
    first_start: float = math.inf
    last_finish: float = -math.inf  # finite once a result was collected
    complete_times: float = 0.0
    complete: int = 0

    def add(self, run: _Run) -> None:
        self.batches += 1
        self.chunks += run.chunks
        self.tasks += run.tasks
        self.finished += run.finished
        self.failed += run.failed
        self.enqueue_seconds += run.enqueue_seconds
        self.enqueued += run.tasks if run.enqueue_seconds else 0
        self.first_start = min(self.first_start, run.started_at)
        end = run.last_finished_at
        if end is not None:
            self.last_finish = max(self.last_finish, end)
            if run.settled >= run.tasks:  # every task collected
                self.complete_times += end - run.started_at
                self.complete += 1


@dataclass(frozen=True)
class BatchReport:
    """Measured figures of a processor's batches (from the stored task times).

    - ``batches``: batches enqueued or opened; ``chunks``: enqueue transactions.
    - ``tasks``: tasks in those batches; ``finished``/``failed``: results
      collected (``failed`` counts failed and cancelled ones).
    - ``wall_time``: from the first batch's start to the last collected finish.
    - ``tasks_per_second``: ``finished`` / ``wall_time``.
    - ``mean_batch_time``: mean start-to-last-finish time of the batches whose
      every task has been collected.
    - ``error_rate``: ``failed`` / ``finished``, as a percentage.
    - ``enqueue_rate``: tasks stored per second of enqueue calls.
    """

    batches: int
    chunks: int
    tasks: int
    finished: int
    failed: int
    wall_time: float
    tasks_per_second: float
    mean_batch_time: float
    error_rate: float
    enqueue_rate: float

    def as_dict(self) -> dict[str, Any]:
        """The figures as a plain dict (times in seconds)."""
        return asdict(self)

    def __str__(self) -> str:
        return "\n".join(
            f"{name:>16}: {_FORMATS.get(name, '{}').format(value)}"
            for name, value in self.as_dict().items()
        )


#: How :class:`BatchReport` shows its float figures.
_FORMATS = {
    "wall_time": "{:.2f} s",
    "tasks_per_second": "{:.1f}",
    "mean_batch_time": "{:.2f} s",
    "error_rate": "{:.1f} %",
    "enqueue_rate": "{:.0f} tasks/s",
}


class Monitor:
    """Collects the figures behind :class:`BatchReport` as batches run.

    Memory is bounded however long the processor lives: it follows at most
    ``max_tasks`` task ids (the newest; a result of an older one is not
    counted) and keeps at most ``max_batches`` batches one by one, folding
    older ones into totals.
    """

    def __init__(
        self,
        max_tasks: int = DEFAULT_TRACKED_TASKS,
        max_batches: int = DEFAULT_TRACKED_BATCHES,
    ) -> None:
        self.max_tasks = max_tasks
        self.max_batches = max_batches
        self._runs: deque[_Run] = deque()
        self._folded = _Folded()
        # task id -> [its batch, whether its latest finish was counted]; oldest first.
        self._tracked: OrderedDict[str, list[Any]] = OrderedDict()

    @property
    def tracked(self) -> int:
        """How many task ids are followed now (at most ``max_tasks``)."""
        return len(self._tracked)

    def start(self, name: str | None, started_at: float) -> _Run:
        """A new batch begins (its enqueue starts, or it was opened)."""
        run = _Run(name, started_at)
        self._runs.append(run)
        while len(self._runs) > self.max_batches:
            self._folded.add(self._runs.popleft())
        return run

    def enqueued(self, run: _Run, ids: list[str], seconds: float) -> None:
        """One chunk of ``run`` was stored in ``seconds``."""
        run.tasks += len(ids)
        run.chunks += 1 if seconds else 0
        run.enqueue_seconds += seconds
        tracked = self._tracked
        for task_id in ids:
            if task_id in tracked:
                tracked.move_to_end(task_id)
            else:
                tracked[task_id] = [run, False]
        while len(tracked) > self.max_tasks:
            tracked.popitem(last=False)

    def adopt(self, name: str | None, started_at: float, ids: list[str]) -> None:
        """A batch found in the database: follow those of its tasks not followed yet
        (opening a batch twice does not count it twice)."""
        unknown = [task_id for task_id in ids if task_id not in self._tracked]
        if unknown:
            self.enqueued(self.start(name, started_at), unknown, 0.0)

    def retried(self, ids: list[str]) -> None:
        """These tasks run again: their next finish counts once more."""
        for task_id in ids:
            entry = self._tracked.get(task_id)
            if entry is not None and entry[1]:
                entry[1] = False
                entry[0].settled -= 1

    def observe(self, results: list[Result]) -> None:
        """Results just collected (each finish is counted once)."""
        for result in results:
            entry = self._tracked.get(result.task_id)
            if entry is None or entry[1]:
                continue
            entry[1] = True
            run: _Run = entry[0]
            run.settled += 1
            run.finished += 1
            run.failed += 0 if result.ok else 1
            if result.finished_at is not None:
                at = result.finished_at.timestamp()
                run.last_finished_at = max(at, run.last_finished_at or at)

    def report(self) -> BatchReport:
        """The figures so far."""
        total = replace(self._folded)
        for run in self._runs:
            total.add(run)
        finished, failed, seconds = total.finished, total.failed, total.enqueue_seconds
        finite = math.isfinite(total.last_finish)
        wall = max(total.last_finish - total.first_start, 0.0) if finite else 0.0
        return BatchReport(
            batches=total.batches,
            chunks=total.chunks,
            tasks=total.tasks,
            finished=finished,
            failed=failed,
            wall_time=wall,
            tasks_per_second=finished / wall if wall > 0 else 0.0,
            mean_batch_time=total.complete_times / total.complete if total.complete else 0.0,
            error_rate=100.0 * failed / finished if finished else 0.0,
            enqueue_rate=total.enqueued / seconds if seconds else 0.0,
        )
