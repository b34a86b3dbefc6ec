"""Samples of the task counts over time: the overview's trends, throughput and
failure rate, kept in memory by the dashboard process.

Throughput and failure rate are not extrapolated from the change between two
samples (a few seconds of samples once gave "17 per minute" for 5 tasks, and
tasks finished before the dashboard started gave 0): each sample also counts,
from the same snapshot, the tasks whose ``finished_at`` is within the last minute
(by whole seconds).

Since schema version 11 a count reads kept counts, not the task table (a
millisecond or two at a million tasks, where a scan took half a second), but a
sample is still taken only when a page asks for one and the latest is older than
the refresh interval, which grows with what a count costs: an idle dashboard
costs nothing, and a watched one spends at most a tenth of its time counting.
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

#: The window of "finished in the last minute".
FINISHED_WINDOW = 60.0

Counts = dict[tuple[str, str], int]
#: What a count returns: the counts per (queue, status), and the part of them
#: finished within ``FINISHED_WINDOW`` of the count (None if the backend cannot tell).
Counted = tuple[Counts, Counts | None]
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Sample:
    """The counts per (queue, status) at one moment (monotonic seconds)."""

    at: float
    counts: Counts
    retrying: dict[str, int] = field(default_factory=dict)  # queued again, per queue
    # Per (queue, status), the tasks finished within FINISHED_WINDOW (None: unknown).
    recent: Counts | None = None
    # The same counts grouped by queue once, so a queue's are a lookup (with
    # thousands of queues, filtering every count per queue and sample added up).
    by_queue: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, dict[str, int]] = {}
        for (queue, status), n in self.counts.items():
            grouped.setdefault(queue, {})[status] = n
        object.__setattr__(self, "by_queue", grouped)


@dataclass(frozen=True)
class QueueTrend:
    """What the samples say about one queue."""

    waiting: list[tuple[float, int]]  # (seconds ago, queued + running)
    finished_per_second: list[tuple[float, float]]  # (seconds ago, rate)
    throughput_per_minute: float | None  # finished in the last 60 s (a real count)
    failure_rate: float | None  # failed / finished in the last 60 s


class CountHistory:
    """Count samples of the last ``HISTORY_SECONDS``, refreshed on demand."""

    def __init__(
        self,
        count: Callable[[], Awaitable[Counted]],
        retrying: Callable[[], Awaitable[dict[str, int]]],
    ) -> None:
        self._count = count
        self._retrying = retrying
        self._samples: deque[Sample] = deque()
        self._lock = asyncio.Lock()
        #: Seconds between samples, given what the last count cost.
        self.interval = MIN_INTERVAL

    async def latest(self) -> Sample:
        """The newest sample, taking a new one if it is older than the interval."""
        async with self._lock:
            now = time.monotonic()
            if self._samples and now - self._samples[-1].at < self.interval:
                return self._samples[-1]
            counts, recent = await self._count()
            retrying = await self._retrying()
            done = time.monotonic()
            self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, (done - now) / COUNT_SHARE))
            self._samples.append(Sample(done, counts, retrying, recent))
            while self._samples and done - self._samples[0].at > HISTORY_SECONDS:
                self._samples.popleft()
            return self._samples[-1]

    def trend(self, queue: str) -> QueueTrend:
        """The waiting tasks and finishing rate of ``queue`` over the kept samples."""
        samples = list(self._samples)
        if not samples:
            return QueueTrend([], [], None, None)
        now = samples[-1].at
        per_queue = [(s.at, s.by_queue.get(queue, {})) for s in samples]
        waiting = [
            (now - at, counts.get("queued", 0) + counts.get("running", 0))
            for at, counts in per_queue
        ]
        rates: list[tuple[float, float]] = []
        for (t0, c0), (t1, c1) in itertools.pairwise(per_queue):
            finished = sum(max(0, c1.get(s, 0) - c0.get(s, 0)) for s in FINISHED)
            rates.append((now - t1, finished / max(t1 - t0, 1e-6)))
        throughput, failure_rate = self._last_minute(samples[-1], queue)
        return QueueTrend(waiting, rates, throughput, failure_rate)

    def rates(self) -> dict[str, tuple[float | None, float | None]]:
        """Per queue of the newest sample: tasks finished in the last minute and the
        failed share of them."""
        if not self._samples:
            return {}
        latest = self._samples[-1]
        return {name: self._last_minute(latest, name) for name in latest.by_queue}

    @staticmethod
    def _last_minute(sample: Sample, queue: str) -> tuple[float | None, float | None]:
        """The tasks of ``queue`` finished within ``FINISHED_WINDOW`` of ``sample``,
        and the failed share of them (None for both if the backend cannot tell)."""
        if sample.recent is None:
            return None, None
        finished = {s: sample.recent.get((queue, s), 0) for s in FINISHED}
        total = sum(finished.values())
        return float(total), (finished["failed"] / total if total else None)
