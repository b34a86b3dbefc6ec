"""The performance report: what the batches of one processor measured."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from sitq.task import Result


@dataclass
class _Run:
    """One batch as this processor saw it."""

    name: str | None
    started_at: float  # unix seconds: when its enqueue began (or the batch was created)
    tasks: int = 0
    chunks: int = 0
    enqueue_seconds: float = 0.0
    finished: int = 0
    failed: int = 0
    last_finished_at: float | None = None
    seen: set[str] = field(default_factory=set)


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
        rows = [
            ("batches", f"{self.batches}"),
            ("chunks", f"{self.chunks}"),
            ("tasks", f"{self.tasks}"),
            ("finished", f"{self.finished}"),
            ("failed", f"{self.failed}"),
            ("wall_time", f"{self.wall_time:.2f} s"),
            ("tasks_per_second", f"{self.tasks_per_second:.1f}"),
            ("mean_batch_time", f"{self.mean_batch_time:.2f} s"),
            ("error_rate", f"{self.error_rate:.1f} %"),
            ("enqueue_rate", f"{self.enqueue_rate:.0f} tasks/s"),
        ]
        return "\n".join(f"{name:>16}: {value}" for name, value in rows)


class Monitor:
    """Collects the figures behind :class:`BatchReport` as batches run."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        self._run_of: dict[str, _Run] = {}

    def start(self, name: str | None, started_at: float) -> _Run:
        """A new batch begins (its enqueue starts, or it was opened)."""
        run = _Run(name, started_at)
        self._runs.append(run)
        return run

    def enqueued(self, run: _Run, ids: list[str], seconds: float) -> None:
        """One chunk of ``run`` was stored in ``seconds``."""
        run.tasks += len(ids)
        run.chunks += 1 if seconds else 0
        run.enqueue_seconds += seconds
        for task_id in ids:
            self._run_of[task_id] = run

    def adopt(self, name: str | None, started_at: float, ids: list[str]) -> None:
        """A batch found in the database: follow those of its tasks not followed yet
        (opening a batch twice does not count it twice)."""
        unknown = [task_id for task_id in ids if task_id not in self._run_of]
        if unknown:
            self.enqueued(self.start(name, started_at), unknown, 0.0)

    def retried(self, ids: list[str]) -> None:
        """These tasks run again: their next finish counts once more."""
        for task_id in ids:
            run = self._run_of.get(task_id)
            if run is not None:
                run.seen.discard(task_id)

    def observe(self, results: list[Result]) -> None:
        """Results just collected (each finish is counted once)."""
        for result in results:
            run = self._run_of.get(result.task_id)
            if run is None or result.task_id in run.seen:
                continue
            run.seen.add(result.task_id)
            run.finished += 1
            run.failed += 0 if result.ok else 1
            if result.finished_at is not None:
                at = result.finished_at.timestamp()
                if run.last_finished_at is None or at > run.last_finished_at:
                    run.last_finished_at = at

    def report(self) -> BatchReport:
        """The figures so far."""
        runs = self._runs
        finished = sum(run.finished for run in runs)
        failed = sum(run.failed for run in runs)
        ends = [run.last_finished_at for run in runs if run.last_finished_at is not None]
        wall = max(ends) - min(run.started_at for run in runs) if ends else 0.0
        complete = [
            run.last_finished_at - run.started_at
            for run in runs
            if run.last_finished_at is not None and len(run.seen) >= run.tasks
        ]
        enqueue_seconds = sum(run.enqueue_seconds for run in runs)
        enqueued = sum(run.tasks for run in runs if run.enqueue_seconds)
        return BatchReport(
            batches=len(runs),
            chunks=sum(run.chunks for run in runs),
            tasks=sum(run.tasks for run in runs),
            finished=finished,
            failed=failed,
            wall_time=max(wall, 0.0),
            tasks_per_second=finished / wall if wall > 0 else 0.0,
            mean_batch_time=statistics.fmean(complete) if complete else 0.0,
            error_rate=100.0 * failed / finished if finished else 0.0,
            enqueue_rate=enqueued / enqueue_seconds if enqueue_seconds else 0.0,
        )
