"""Progress of a run as it happens: per step, processed, failed, total and percent."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from sitq.display import terminal_safe


@dataclass(frozen=True)
class StepProgress:
    """Where a step is: items processed (succeeded or failed), failed, and in all."""

    step: str
    processed: int
    failed: int
    total: int

    @property
    def percent(self) -> float:
        """Processed items as a percentage of all (100 for a step without items)."""
        return 100.0 if self.total == 0 else 100.0 * self.processed / self.total

    def line(self) -> str:
        """``step: 3/5 processed, 1 failed (60%)``."""
        return (
            f"{self.step}: {self.processed}/{self.total} processed, {self.failed} failed "
            f"({self.percent:.0f}%)"
        )


class Reporter:
    """Receives a run's events; this base class passes progress updates to
    ``on_progress`` (if given) and ignores the rest."""

    def __init__(self, on_progress: Callable[[StepProgress], None] | None = None) -> None:
        self._on_progress = on_progress

    def run_started(self, run_id: str, where: str, resumed: bool) -> None:
        """The run begins (or resumes); ``where`` says where items run."""

    def progress(self, progress: StepProgress, final: bool = False) -> None:
        """A step's progress changed (``final`` once the step is over)."""
        if self._on_progress is not None:
            self._on_progress(progress)

    def step_skipped(self, step: str) -> None:
        """A step finished in an earlier attempt of the run is not run again."""

    def step_finished(self, step: str, status: str, error: str | None) -> None:
        """A step ended."""

    def message(self, text: str) -> None:
        """A line of output from the run (echo steps, on_item_error, notes)."""

    def warning(self, text: str) -> None:
        """A warning about the workflow (see sitq.workflow.lint), before it runs; this
        base class logs it on the ``sitq.workflow`` logger."""
        logging.getLogger("sitq.workflow").warning("%s", text)


class LineReporter(Reporter):
    """Prints a live progress line per step.

    On a terminal the line is rewritten in place (at most every 0.1 s); otherwise
    a line is printed at most every ``interval`` seconds, and always at the end.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 1.0) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else interval
        self._last: dict[str, float] = {}
        self._open_line = False

    def _write(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def run_started(self, run_id: str, where: str, resumed: bool) -> None:
        """Print the run id first, so it is known even if the run is killed."""
        verb = "resuming" if resumed else "run"
        self._write(f"{verb} {run_id} (items run {where})")

    def progress(self, progress: StepProgress, final: bool = False) -> None:
        """Print or rewrite the step's line, throttled."""
        now = time.monotonic()
        if not final and now - self._last.get(progress.step, 0.0) < self.interval:
            return
        self._last[progress.step] = now
        if self.tty:
            self.stream.write("\r\033[K" + progress.line())
            self._open_line = True
            if final:
                self.stream.write("\n")
                self._open_line = False
            self.stream.flush()
        else:
            self._write(progress.line())

    def step_skipped(self, step: str) -> None:
        """Say the step is already done."""
        self._write(f"{step}: done in an earlier attempt, not run again")

    def step_finished(self, step: str, status: str, error: str | None) -> None:
        """Say how the step ended."""
        if error and status != "succeeded":
            # An item's error may be anything its code raised: escape what could drive
            # the terminal.
            status += ": " + terminal_safe(error, keep_newlines=True)
        self._write(f"{step}: {status}")

    def message(self, text: str) -> None:
        """Print a line of the run's output."""
        self._write(text)

    def warning(self, text: str) -> None:
        """Print the warning as a ``warning: ...`` line."""
        self._write(f"warning: {text}")
