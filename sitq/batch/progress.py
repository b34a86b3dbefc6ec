"""Progress of a batch: counts by status, and the progress bar."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sitq.task import Result, TaskStatus

if TYPE_CHECKING:
    from sitq import Progress


@dataclass(frozen=True)
class BatchProgress:
    """How far a batch has come, counted by the database in one go.

    ``missing`` counts tasks that are no longer stored (pruned after their
    ``result_ttl``, purged) or ids that never existed.
    """

    total: int
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    missing: int = 0

    @classmethod
    def from_counts(cls, total: int, counts: dict[str, int]) -> BatchProgress:
        """From a total and per-status counts; what is not counted is missing."""
        known = {status.value: int(counts.get(status.value, 0)) for status in TaskStatus}
        return cls(total=total, missing=max(0, total - sum(known.values())), **known)

    @property
    def finished(self) -> int:
        """Tasks that will not run again on their own (succeeded, failed, cancelled)."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def done(self) -> bool:
        """True when nothing is queued or running any more."""
        return self.queued == 0 and self.running == 0

    @property
    def fraction(self) -> float:
        """Finished tasks as a fraction of the total (1.0 for an empty batch)."""
        return self.finished / self.total if self.total else 1.0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"{self.finished}/{self.total} finished"]
        parts += [
            f"{count} {name}" for name, count in self.as_dict().items() if name != "total" and count
        ]
        return ", ".join(parts)


class ProgressBar:
    """A ``tqdm.auto`` bar (a widget in Jupyter, a bar in a terminal): done/total,
    rate and ETA from tqdm, failures in the postfix. Running tasks that report
    progress (``sitq.current_task().report_progress`` with a total) count as the
    fraction they reported, so the bar moves between finishes. Disabled: shows
    nothing."""

    def __init__(self, enabled: bool, total: int, desc: str | None) -> None:
        from tqdm.auto import tqdm  # on first use: importing sitq.batch stays light

        self._bar = tqdm(
            total=total, desc=desc or "batch", unit="task", dynamic_ncols=True, disable=not enabled
        )
        self._failed = 0
        self._enabled = enabled
        self._partial: dict[str, float] = {}  # running tasks' reported fractions

    def report(self, task_id: str, progress: Progress) -> None:
        """A running task reported progress: count the fraction it has done."""
        fraction = progress.fraction
        if fraction is None or not self._enabled:
            return
        before = self._partial.get(task_id, 0.0)
        self._partial[task_id] = fraction
        if fraction != before:
            self._bar.update(fraction - before)

    def advance(self, results: list[Result]) -> None:
        """Count newly finished tasks (the rest of what they had reported)."""
        if failed := sum(1 for result in results if not result.ok):
            self._failed += failed
            self._bar.set_postfix(failed=self._failed, refresh=False)
        if not results:
            return
        if not self._partial:
            self._bar.update(len(results))
            return
        done = sum(self._partial.pop(r.task_id, 0.0) for r in results)
        self._bar.update(len(results) - done)
        if not self._partial:  # whole tasks only again: show a whole count
            self._bar.n = round(self._bar.n)

    def close(self) -> None:
        """Finish the bar (it stays on screen)."""
        self._bar.close()
