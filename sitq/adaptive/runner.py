"""Running one taken batch: the calls, retries, bisection, results and statistics.

A batch is split into groups that can share a call (see
:mod:`sitq.adaptive.stacking`). Each group is called once; if it raises it is
retried ``max_retries`` times after ``retry_delay``; if it still fails it is
bisected, each half called once, until every failing item is alone, so every
good item still gets its result and only the failing ones get the exception.
A :class:`BatchOutputError` (output that cannot be split back) is a contract
error and is not retried, only bisected. A batch whose halves all succeed
failed because of its size: the batch size is halved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, cast

from sitq.adaptive.config import AdaptiveBatchConfig
from sitq.adaptive.errors import BatchOutputError
from sitq.adaptive.pending import Request
from sitq.adaptive.sizing import BatchSizer
from sitq.adaptive.stacking import Stacker, group_requests
from sitq.adaptive.stats import BatchStats

__all__ = ["BatchRunner", "fail_request"]

logger = logging.getLogger("sitq.adaptive")


def fail_request(request: Request, error: BaseException, log: bool = True) -> None:
    """Give ``request`` its exception (log it when nobody waits for a result)."""
    if request.future is None and log:
        logger.warning("an enqueued item (no future to report to) failed: %r", error)
    _settle([request], [error], is_error=True)


def _claim(request: Request) -> bool:
    """Mark a taken request running; False if its caller cancelled it already."""
    future = request.future
    if future is None:
        return True
    if request.loop is None:
        # A request without a loop carries a concurrent future (see Request).
        return cast("Future[Any]", future).set_running_or_notify_cancel()
    # An asyncio future is only read here; a cancel racing with this check is
    # seen at delivery, which skips futures that are already done.
    return not future.cancelled()


#: (future, value or exception): a concurrent future, or an asyncio one of the
#: request's loop (see Request); both have what _deliver calls.
Delivery = tuple["Future[Any] | asyncio.Future[Any]", Any]


def _deliver(items: list[Delivery], is_error: bool) -> None:
    """Settle each future; one already done (cancelled, or failed by stop) is skipped."""
    for future, value in items:
        try:
            if is_error:
                future.set_exception(value)
            else:
                future.set_result(value)
        except (InvalidStateError, asyncio.InvalidStateError):
            pass


def _settle(
    group: list[Request],
    values: list[Any],
    is_error: bool = False,
    latencies: list[float] | None = None,
) -> None:
    """Give each request its result (or exception): at once, or on its event loop."""
    now: list[Delivery] = []
    by_loop: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
    for request, value in zip(group, values, strict=True):
        if request.future is not None:
            items = now if request.loop is None else by_loop.setdefault(request.loop, [])
            items.append((request.future, value))
    _deliver(now, is_error)
    for loop, items in by_loop.items():
        # One wake-up of the loop per batch, not one per item.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits these
            loop.call_soon_threadsafe(_deliver, items, is_error)
    if latencies is not None:
        end = time.monotonic()
        latencies.extend([end - r.enqueued_at for r in group])


class BatchRunner:
    """Runs batches on the batch thread; the processor owns the queue and the lifecycle.

    Under the processor's ``lock`` it feeds the ``sizer`` and bumps the
    processor's ``counts``; ``abandoned`` is set when ``stop(timeout)`` gave up
    waiting, which ends retries and bisection.
    """

    def __init__(
        self,
        config: AdaptiveBatchConfig,
        func: Callable[[Any], Any],
        stats: BatchStats,
        lock: threading.Lock,
        sizer: BatchSizer,
        counts: dict[str, int],
        abandoned: threading.Event,
    ) -> None:
        self.config = config
        self.func = func
        self.stats = stats
        self.lock = lock
        self.sizer = sizer
        self.counts = counts
        self.abandoned = abandoned
        self.stacker = Stacker(config.enable_memory_optimization)
        self.batch_ids = itertools.count(1)
        #: (batch id, monotonic start, items) while inside ``func``, for stuck detection.
        self.current_call: tuple[int, float, int] | None = None
        #: When the last batch started (``min_batch_interval`` counts from it).
        self.last_batch_start = -math.inf

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the processor's counter ``name``."""
        with self.lock:
            self.counts[name] += n

    def run(self, batch: list[Request], queue_length: int) -> None:
        """Process one batch taken from the queue (``queue_length`` items were waiting)."""
        live = [r for r in batch if _claim(r)]
        if len(live) < len(batch):
            self.count("total_cancelled", len(batch) - len(live))
        if not live:
            return
        batch_id = next(self.batch_ids)
        started = self.last_batch_start = time.monotonic()
        monitoring = self.config.enable_monitoring
        latencies: list[float] | None = [] if monitoring else None
        errors = 0
        for group in group_requests(live):
            errors += self._group(group, batch_id, latencies)
        finished = time.monotonic()
        queue_times = [started - r.enqueued_at for r in live] if monitoring else []
        self.stats.update(
            finished - started,
            len(live),
            queue_times,
            latencies or [],
            queue_length,
            finished=finished,
            errors=errors,
        )

    def _call(self, group: list[Request], batch_id: int) -> list[Any]:
        payload = self.stacker.combine(group)
        self.current_call = (batch_id, time.monotonic(), len(group))
        try:
            output = self.func(payload)
        finally:
            self.current_call = None
        return self.stacker.split(group, output, payload)

    def _group(self, group: list[Request], batch_id: int, latencies: list[float] | None) -> int:
        """Process one group: call, retry, then bisect. Returns how many items failed."""
        cfg = self.config
        attempt = 0
        while True:
            begun = time.monotonic()
            try:
                results = self._call(group, batch_id)
            except Exception as exc:
                error = exc
            else:
                if attempt == 0:
                    with self.lock:
                        self.sizer.observe(len(group), time.monotonic() - begun)
                _settle(group, results, latencies=latencies)
                return 0
            # A wrong output shape is a contract error: retrying the same batch cannot help.
            if isinstance(error, BatchOutputError) or attempt >= cfg.max_retries:
                break
            if self.abandoned.is_set():
                return 0
            attempt += 1
            self.count("retries")
            logger.warning(
                "batch %d (%d items) failed with %r; retry %d of %d in %gs",
                batch_id,
                len(group),
                error,
                attempt,
                cfg.max_retries,
                cfg.retry_delay,
            )
            if self.abandoned.wait(cfg.retry_delay):
                return 0
        if len(group) == 1:
            fail_request(group[0], error)
            return 1
        logger.warning(
            "batch %d (%d items) failed with %r after %d retries: bisecting it to find the "
            "failing items",
            batch_id,
            len(group),
            error,
            attempt,
        )
        self.count("bisections")
        failed = self._bisect(group, batch_id, latencies)
        if failed == 0 and not self.abandoned.is_set():
            # Every part succeeded on its own: the size itself failed (out of memory, a
            # payload limit...). Smaller batches prevent the next such failure.
            logger.warning(
                "batch %d: all %d items succeeded in smaller batches, so the failure was "
                "size-related; halving the batch size",
                batch_id,
                len(group),
            )
            with self.lock:
                self.sizer.size_failed(len(group))
        return failed

    def _bisect(self, group: list[Request], batch_id: int, latencies: list[float] | None) -> int:
        """Call each half of a failing group once, bisecting the failing ones; count failures."""
        failed = 0
        mid = len(group) // 2
        for part in (group[:mid], group[mid:]):
            if self.abandoned.is_set():
                break
            try:
                results = self._call(part, batch_id)
            except Exception as exc:
                if len(part) == 1:
                    fail_request(part[0], exc)
                    failed += 1
                else:
                    failed += self._bisect(part, batch_id, latencies)
            else:
                _settle(part, results, latencies=latencies)
        return failed
