"""Taking tasks and holding them: a Worker's claim loop, with its adaptive
prefetch, and the heartbeat that renews the leases of what it holds and hears
cancel requests.

``Claiming`` is that part of :class:`~sitq.worker.Worker`, built on
:class:`~sitq.worker.execution.Execution`, which runs what it claims.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from sitq import telemetry
from sitq.current import FLUSH_INTERVAL
from sitq.worker.execution import Execution
from sitq.worker.runs import Running, logger

#: Adaptive prefetch holds about this many seconds of work per slot...
PREFETCH_HORIZON = 0.05
#: ...and never more than this many tasks beyond the free slots (claims of a few
#: hundred short tasks cost the database about a third less per task than claims
#: of a few dozen)...
MAX_PREFETCH = 512
#: ...nor more tasks than hold about this many bytes of payloads while they wait
#: for a slot (a few large payloads must not fill the worker's memory).
PREFETCH_BYTES = 8 * 1024 * 1024
#: The wait between looks while work is due but was not claimed (and after a
#: claim that took some tasks but not all it had room for).
UNSETTLED_POLL = 0.05
#: Seconds between refreshes of the sitq.queue.depth gauge (when metrics are on).
DEPTH_INTERVAL = 30.0
#: The shortest pause between two heartbeats brought forward by cancel requests
#: (a burst of cancels costs each worker a heartbeat per this many seconds).
CANCEL_WAKE_GAP = 0.05


class Claiming(Execution):
    """The claim loop and the heartbeat of a Worker (see the module docstring)."""

    queues: tuple[str, ...]
    prefetch: int | None  # None: adaptive, see _prefetch_now()
    poll_interval: float
    _due_unreadable: bool = False  # the last next_due() failed (logged once)
    heartbeat_interval: float
    burst: bool

    # -- claiming -----------------------------------------------------------

    async def _claim_until_stopped(self) -> bool:
        """Claim while slots and the prefetch buffer have room, until a stop is
        requested (False) or, in burst mode, nothing is left to run (True: the
        caller stops the worker)."""
        assert self._stop_requested and self._room
        failures = 0
        while not self._stop_requested.is_set():
            prefetch = self._prefetch_now()
            room = self.concurrency + prefetch - len(self._running)
            busy = self._executing >= self.concurrency
            if room <= 0 or (busy and len(self._ready) > prefetch // 2):
                # Enough in hand: claim again once a slot frees or the buffer runs low.
                self._room.clear()
                await self._wait_any(self._room.wait(), None)
                continue
            try:
                asked_at = time.monotonic()  # the leases run from no earlier than this
                # Burst mode ends only on a claim that began once every retry was due.
                asked_wall = time.time()
                claimed = await self.backend.claim(self.id, self.queues, room, self.lease_seconds)
                failures = 0
            except Exception:
                failures += 1
                logger.exception("worker %s: claim failed (attempt %d)", self.id, failures)
                await self._wait_any(asyncio.sleep(min(0.05 * 2**failures, 5.0)), None)
                continue
            if claimed:
                # A running mean, but never below this claim's largest payload.
                sizes = [len(task.payload) for task in claimed]
                mean = self._payload_size + (sum(sizes) / len(sizes) - self._payload_size) * 0.2
                self._payload_size = max(mean, max(sizes))
            for task in claimed:
                running = Running(task, claimed_at=asked_at)
                self._running[task.id] = running
                self._ready.append(running)
            self._dispatch()
            if len(claimed) < room:
                if self.burst and not self._running and asked_wall >= self._retries_due:
                    logger.info("worker %s: nothing left to run (burst mode)", self.id)
                    return True
                # The queue had no more ready work: wait for a wake-up, or until
                # something falls due.
                wait = (
                    await self._idle_wait()
                    if not claimed
                    else min(UNSETTLED_POLL, self.poll_interval)
                )
                await self._wait_any(self.backend.wait_for_change("tasks", wait), None)
        return False

    async def _idle_wait(self) -> float:
        """How long a worker that found nothing to claim waits for a wake-up: until
        the next delayed task, retry or lease falls due, at most ``poll_interval``;
        ``UNSETTLED_POLL`` when something is due but was not claimable (it fell
        due since the claim). A paused queue's tasks are not due: resuming it
        wakes the workers; nor are those under a full limit: a limited task's
        end does."""
        try:
            due = await self.backend.next_due(self.queues)
        except Exception as exc:
            # Once with its traceback; then briefly (an outage would repeat it per look).
            if not self._due_unreadable:
                logger.exception("worker %s: could not read when work falls due", self.id)
            else:
                logger.debug("worker %s: next_due failed again: %s", self.id, exc)
            self._due_unreadable = True
            return min(UNSETTLED_POLL, self.poll_interval)
        self._due_unreadable = False
        if due is None:
            return self.poll_interval
        rest = due - self.backend.now()
        if rest <= 0:
            return min(UNSETTLED_POLL, self.poll_interval)
        return min(rest, self.poll_interval)

    def _prefetch_now(self) -> int:
        if self.prefetch is not None:
            return self.prefetch
        per_slot = PREFETCH_HORIZON / max(self._run_time, 1e-5)
        by_size = PREFETCH_BYTES // max(int(self._payload_size), 1)
        return max(1, min(MAX_PREFETCH, by_size, int(per_slot * self.concurrency)))

    async def _wait_any(
        self, awaitable: Awaitable[Any], timeout: float | None, also: asyncio.Event | None = None
    ) -> None:
        """Wait for ``awaitable`` or for the event ``also`` (default: a stop request),
        whichever comes first, for at most ``timeout`` seconds."""
        assert self._stop_requested
        first = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future((also or self._stop_requested).wait())
        try:
            await asyncio.wait([first, stop], timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for future in (first, stop):
                if not future.done():
                    future.cancel()

    # -- progress -----------------------------------------------------------

    async def _progress_loop(self) -> None:
        """Every FLUSH_INTERVAL, hand the new progress reports of every task this
        worker runs to the writer, which stores them in one write (none if none
        changed). A task's last report goes with its outcome (``OutcomeWriter.submit``)."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            reports = [r for r in map(Running.unflushed, self._running.values()) if r is not None]
            if reports and self._writer is not None:
                self._writer.progress(reports)

    # -- heartbeat ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        next_prune = next_depth = 0.0
        while True:
            # Brought forward by a cancel asked of a held task (SQLite wake-up,
            # PostgreSQL NOTIFY), so a prefetched one ends cancelled before it
            # could start; otherwise every heartbeat_interval.
            beat = time.monotonic()
            try:
                await self.backend.wait_for_change("cancels", self.heartbeat_interval)
                gap = min(CANCEL_WAKE_GAP, self.heartbeat_interval)
            except Exception:  # cannot wait for wake-ups: the whole interval passes
                gap = self.heartbeat_interval
            rest = gap - (time.monotonic() - beat)
            if rest > 0:
                await asyncio.sleep(rest)
            try:
                leases = [r.task.lease for r in self._running.values()]
                asked_at = time.monotonic()
                cancel_ids = await self.backend.heartbeat(self.id, leases, self.lease_seconds)
                self._renewed_at = asked_at
                for task_id in cancel_ids:
                    running = self._running.get(task_id)
                    if running is not None:
                        logger.info("worker %s: cancelling task %s", self.id, task_id)
                        self._interrupt(running, "cancel")
                if telemetry.metrics_on() and time.monotonic() >= next_depth:
                    # Counting reads every row: at most twice a minute per worker.
                    next_depth = time.monotonic() + DEPTH_INTERVAL
                    telemetry.set_queue_depth((await self.backend.counts()).statuses)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 60.0
                    pruned = await self.backend.prune()
                    if pruned:
                        logger.info("worker %s: pruned %d expired results", self.id, pruned)
            except Exception:
                logger.exception("worker %s: heartbeat failed; will try again", self.id)
