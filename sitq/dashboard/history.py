"""Samples of the task counts over time: the overview's trends, throughput and
failure rate, kept in memory by the dashboard process.

Counting scans the task table (about half a second per million tasks on
SQLite), so a sample is taken only when a page asks for one and the latest is
older than the refresh interval, which grows with what a count costs: an idle
dashboard costs nothing, and a watched one spends at most a tenth of its time
counting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: How far back trends reach.
HISTORY_SECONDS = 600.0
#: The shortest time between two samples.
MIN_INTERVAL = 1.0
#: The longest: a count slower than a few seconds is refreshed no more often.
MAX_INTERVAL = 30.0
#: A sample may take at most this share of the time.
COUNT_SHARE = 0.1

Counts = dict[tuple[str, str], int]
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Sample:
    """The counts per (queue, status) at one moment (monotonic seconds)."""

    at: float
    counts: Counts
    retrying: dict[str, int] = field(default_factory=dict)  # queued again, per queue
    # The same counts grouped by queue once, so a queue's are a lookup (with
    # thousands of queues, filtering every count per queue and sample added up).
    by_queue: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, dict[str, int]] = {}
        for (queue, status), n in self.counts.items():
            grouped.setdefault(queue, {})[status] = n
        object.__setattr__(self, "by_queue", grouped)

    def queue(self, name: str) -> dict[str, int]:
        """This sample's counts of one queue, by status."""
        return dict(self.by_queue.get(name, {}))


@dataclass(frozen=True)
class QueueTrend:
    """What the samples say about one queue."""

    waiting: list[tuple[float, int]]  # (seconds ago, queued + running)
    finished_per_second: list[tuple[float, float]]  # (seconds ago, rate)
    throughput_per_minute: float | None  # finished in the last minute, per minute
    failure_rate: float | None  # failed / finished over the last minute


class CountHistory:
    """Count samples of the last ``HISTORY_SECONDS``, refreshed on demand."""

    def __init__(
        self,
        count: Callable[[], Awaitable[Counts]],
        retrying: Callable[[], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self._count = count
        self._retrying = retrying
        self._samples: deque[Sample] = deque()
        self._lock = asyncio.Lock()
        self._interval = MIN_INTERVAL
        self.last_duration = 0.0

    @property
    def interval(self) -> float:
        """Seconds between samples, given what the last count cost."""
        return self._interval

    async def latest(self) -> Sample:
        """The newest sample, taking a new one if it is older than the interval."""
        async with self._lock:
            now = time.monotonic()
            if self._samples and now - self._samples[-1].at < self._interval:
                return self._samples[-1]
            counts = await self._count()
            retrying = await self._retrying() if self._retrying else {}
            done = time.monotonic()
            self.last_duration = done - now
            self._interval = min(MAX_INTERVAL, max(MIN_INTERVAL, self.last_duration / COUNT_SHARE))
            self._samples.append(Sample(done, counts, retrying))
            while self._samples and done - self._samples[0].at > HISTORY_SECONDS:
                self._samples.popleft()
            return self._samples[-1]

    def trend(self, queue: str) -> QueueTrend:
        """The waiting tasks and finishing rate of ``queue`` over the kept samples."""
        samples = list(self._samples)
        if not samples:
            return QueueTrend([], [], None, None)
        now = samples[-1].at
        per_queue = [(s.at, s.queue(queue)) for s in samples]
        waiting = [
            (now - at, counts.get("queued", 0) + counts.get("running", 0))
            for at, counts in per_queue
        ]
        rates: list[tuple[float, float]] = []
        for (t0, c0), (t1, c1) in itertools.pairwise(per_queue):
            finished = sum(max(0, c1.get(s, 0) - c0.get(s, 0)) for s in FINISHED)
            rates.append((now - t1, finished / max(t1 - t0, 1e-6)))
        throughput, failure_rate = self._last_minute(per_queue)
        return QueueTrend(waiting, rates, throughput, failure_rate)

    def rates(self) -> dict[str, tuple[float | None, float | None]]:
        """Per queue of the newest sample, what ``trend`` says of its last minute
        (finished per minute, failed share), for every queue in one pass."""
        samples = list(self._samples)
        if not samples:
            return {}
        queues = samples[-1].by_queue
        if len(samples) < 2:
            return dict.fromkeys(queues, (None, None))
        # The window depends on the samples' times only: the same for every queue.
        end = samples[-1]
        start = next((s for s in samples if end.at - s.at <= 60.0), samples[-2])
        if end.at - start.at <= 0:
            start = samples[-2]
        return {
            name: self._last_minute(
                [(start.at, start.by_queue.get(name, {})), (end.at, end.by_queue[name])]
            )
            for name in queues
        }

    @staticmethod
    def _last_minute(
        per_queue: list[tuple[float, dict[str, int]]],
    ) -> tuple[float | None, float | None]:
        """Finished per minute and the failed share, from the oldest sample within the
        last minute (or the one just before it) to the newest."""
        if len(per_queue) < 2:
            return None, None
        end_at, end = per_queue[-1]
        start_at, start = next(
            ((at, c) for at, c in per_queue if end_at - at <= 60.0), per_queue[-2]
        )
        if end_at - start_at <= 0:
            start_at, start = per_queue[-2]
        finished = {s: max(0, end.get(s, 0) - start.get(s, 0)) for s in FINISHED}
        total = sum(finished.values())
        per_minute = total * 60.0 / (end_at - start_at)
        return per_minute, (finished["failed"] / total if total else None)
