"""Helpers for testing code that enqueues sitq tasks.

::

    from sitq.testing import TemporaryQueue

    async def test_signup_sends_a_welcome_email():
        async with TemporaryQueue() as queue:
            await signup(queue, "ada@example.com")     # your code enqueues
            report = await queue.run_all()             # run everything due, here
            assert report.succeeded == 1 and report.failed == 0

``run_all`` runs a worker in this process in burst mode, one task at a time in
queue order (priority, then time, then enqueue order), including retries that
come due while it runs, and returns when nothing is left to run. Tasks delayed
further than that stay queued. No thread races, no sleeps in your tests.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sitq.queue import TaskQueue
from sitq.serialization import Serializer
from sitq.worker import Worker


@dataclass(frozen=True)
class RunAllReport:
    """What ``run_all`` ran, by outcome (``retried`` counts failed attempts
    that were run again)."""

    succeeded: int
    failed: int
    cancelled: int
    retried: int

    @property
    def total(self) -> int:
        """Tasks that reached an outcome."""
        return self.succeeded + self.failed + self.cancelled


class TemporaryQueue(TaskQueue):
    """A TaskQueue on a fresh SQLite database in a temporary directory, removed
    on close; ``run_all()`` runs what is due. Also works on a path you give."""

    def __init__(
        self,
        path: str | Path | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        self._tempdir = None if path is not None else tempfile.mkdtemp(prefix="sitq-test-")
        database = Path(path) if path is not None else Path(self._tempdir or ".") / "tasks.db"
        super().__init__(database, serializer)
        self.path = database

    async def close(self) -> None:
        """Close, and remove the temporary database (if this queue made it)."""
        await super().close()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)

    async def run_all(
        self, *, queues: tuple[str, ...] | None = None, **worker: Any
    ) -> RunAllReport:
        """Run every task that is due (and every retry that comes due meanwhile)
        with an in-process worker, one at a time, and report the outcomes.

        ``queues`` defaults to every queue that has tasks; ``worker`` options go
        to :class:`Worker` (for example ``pool="process"``).
        """
        if queues is None:
            stored, _ = await self.task_counts()
            queues = tuple(sorted({queue for queue, _ in stored})) or ("default",)
        options = {"concurrency": 1, "schedules": (), **worker}
        runner = Worker(self._backend, self.serializer, queues=queues, burst=True, **options)
        await runner.start()
        await runner.run()
        counts = runner.outcomes
        return RunAllReport(
            counts["succeeded"], counts["failed"], counts["cancelled"], counts["retried"]
        )
