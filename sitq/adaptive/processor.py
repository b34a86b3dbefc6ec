"""AdaptiveBatchProcessor: callers submit single items, one call processes a batch.

Producers (any number of threads and coroutines) put items on a bounded queue.
One batch thread takes a batch when the queue holds the current batch size,
or when the oldest item has waited ``batch_timeout``, and never starts two
batches closer than ``min_batch_interval``. It calls ``process_func`` once per
batch (numpy rows stacked, other items as a list), hands each caller its own
result, retries and then bisects failing batches, and adapts the batch size
to measured processing times (see :mod:`sitq.adaptive.sizing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from sitq.adaptive.config import AdaptiveBatchConfig, BatchPriority, check_seconds
from sitq.adaptive.errors import ProcessorStoppedError, QueueFullError
from sitq.adaptive.health import HealthMonitor
from sitq.adaptive.pending import PendingQueue, Request
from sitq.adaptive.runner import BatchRunner, fail_request
from sitq.adaptive.sizing import BatchSizer
from sitq.adaptive.stacking import describe_item
from sitq.adaptive.stats import BatchStats

__all__ = ["AdaptiveBatchProcessor"]

logger = logging.getLogger("sitq.adaptive")

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AdaptiveBatchProcessor:
    """Groups single items into adaptively sized batches for one batch function.

    Create it with an :class:`AdaptiveBatchConfig` (or its fields as keywords),
    ``start(process_func)``, then submit items from any thread or coroutine::

        processor = AdaptiveBatchProcessor(batch_timeout=0.005, max_batch_size=128)
        processor.start(model.predict)              # one call per batch
        future = processor.enqueue_predict(row)     # concurrent.futures.Future
        label = await processor.submit(row)         # from a coroutine
        processor.stop(timeout=5.0)

    ``process_func`` runs on the processor's batch thread and receives either a
    numpy array (numpy items stacked like ``np.vstack``) or a list of items; it
    returns one result per row or item, in order. Items may be queued before
    ``start``. ``stop`` processes what is queued, then fails what is left.
    """

    def __init__(self, config: AdaptiveBatchConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError("pass either an AdaptiveBatchConfig or keyword options, not both")
        if config is None:
            config = AdaptiveBatchConfig(**options)
        elif not isinstance(config, AdaptiveBatchConfig):
            raise TypeError(f"config must be an AdaptiveBatchConfig, not {type(config).__name__}")
        self.config = config
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the batch thread waits for work
        self._space = threading.Condition(self._lock)  # producer threads wait for room
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._queue = PendingQueue(config.enable_priority_queue)
        self._sizer = BatchSizer(config)
        self._stats = BatchStats(config.monitoring_window, config.enable_monitoring)
        self._health = HealthMonitor(config, self) if config.enable_health_monitoring else None
        self._state = _NEW
        self._paused = False
        self._closed_reason: str | None = None
        self._abandoned = threading.Event()  # stop() stopped waiting for the batch thread
        self._thread: threading.Thread | None = None
        self._runner: BatchRunner | None = None
        self._inflight: list[Request] = []
        self._counts = {
            "total_enqueued": 0,
            "total_unprocessed": 0,
            "total_cancelled": 0,
            "retries": 0,
            "bisections": 0,
            "gc_collections": 0,
            "batches_sent_full": 0,
            "batches_sent_on_timeout": 0,
            "batches_sent_on_stop": 0,
        }
        self._items_since_gc = 0

    # -- lifecycle ------------------------------------------------------------

    def start(self, process_func: Callable[[Any], Any]) -> None:
        """Start the batch thread (and the health thread) with ``process_func``."""
        if not callable(process_func):
            raise TypeError(f"process_func must be callable, not {process_func!r}")
        if inspect.iscoroutinefunction(process_func):
            raise TypeError(
                "process_func must be a plain function: it runs on the processor's batch "
                "thread; wrap async code with asyncio.run_coroutine_threadsafe if needed"
            )
        with self._lock:
            if self._state != _NEW:
                raise ProcessorStoppedError(
                    f"this processor is already {self._state}: start() runs once; create a "
                    "new AdaptiveBatchProcessor to start again"
                )
            self._runner = runner = BatchRunner(
                self.config,
                process_func,
                self._stats,
                self._lock,
                self._sizer,
                self._counts,
                self._abandoned,
            )
            self._state = _RUNNING
            self._thread = threading.Thread(
                target=self._wrapped_worker_loop,
                args=(runner,),
                name="sitq-adaptive-batch",
                daemon=True,
            )
            self._thread.start()
        if self._health is not None:
            self._health.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop: process what is queued (even if paused), within ``timeout`` seconds.

        New items are refused at once. Whatever is still queued when the timeout
        expires, and a batch still inside ``process_func`` then, fails with
        :class:`ProcessorStoppedError` (the late result of that call is dropped;
        the call itself cannot be interrupted). ``timeout=None`` waits for the
        queue to drain however long it takes. Calling it again does nothing.
        """
        check_seconds("timeout", timeout, call=True)
        if self._thread is not None and threading.current_thread() is self._thread:
            raise ProcessorStoppedError(
                "stop() was called from process_func, which would wait for itself: call it "
                "from another thread"
            )
        with self._lock:
            if self._state in (_STOPPING, _STOPPED):
                return
            started = self._state == _RUNNING
            self._state = _STOPPING
            if self._closed_reason is None:
                self._closed_reason = (
                    "the processor was stopped: create and start a new "
                    "AdaptiveBatchProcessor to process more items"
                )
            self._work.notify_all()
            self._wake_all_producers()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            drained = thread is not None and not thread.is_alive()
            if not drained:
                self._abandoned.set()
                self._work.notify_all()
            left = self._queue.pop_many(len(self._queue))
            running = [] if drained else self._inflight
            inflight = [r for r in running if r.future is None or not r.future.done()]
            self._counts["total_unprocessed"] += len(left) + len(inflight)
            self._state = _STOPPED
        if left or inflight:
            why = "stop() was called before start()"
            if started:
                why = f"stop(timeout={timeout}) expired"
            for request in left:
                error = ProcessorStoppedError(f"{why}: this item was never processed")
                fail_request(request, error)
            dropped = (
                f"{why} while this item's batch was still in process_func; its result is dropped"
            )
            for request in inflight:
                fail_request(request, ProcessorStoppedError(dropped), log=False)
            logger.warning(
                "adaptive batch processor stopped: %s with %d items queued and %d in a running "
                "batch; they failed with ProcessorStoppedError",
                why,
                len(left),
                len(inflight),
            )
        if self._health is not None:
            self._health.stop()

    def pause(self) -> None:
        """Send no new batches until :meth:`resume` (a running batch finishes)."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        """Send batches again after :meth:`pause`."""
        with self._lock:
            self._paused = False
            self._work.notify()

    def __enter__(self) -> AdaptiveBatchProcessor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- producers --------------------------------------------------------------

    def enqueue(
        self,
        item: Any,
        timeout: float | None = None,
        priority: BatchPriority | int = BatchPriority.NORMAL,
    ) -> None:
        """Queue ``item`` for processing without a result (failures are logged).

        A full queue blocks up to ``timeout`` seconds (None: until there is room)
        and then raises :class:`QueueFullError`; ``timeout=0`` never blocks.
        ``priority`` orders items when ``enable_priority_queue`` is on (it is
        checked, and otherwise ignored). Items may be queued before ``start``.
        """
        self._put(self._request(item, None, priority, timeout), timeout)

    def enqueue_predict(
        self,
        item: Any,
        timeout: float | None = None,
        priority: BatchPriority | int = BatchPriority.NORMAL,
    ) -> Future[Any]:
        """Queue ``item``; the returned future gets its result or its exception.

        ``timeout`` bounds only the wait for room in the queue, as in :meth:`enqueue`.
        Cancelling the future before its batch is taken skips the item.
        """
        future: Future[Any] = Future()
        self._put(self._request(item, future, priority, timeout), timeout)
        return future

    async def submit(
        self,
        item: Any,
        *,
        priority: BatchPriority | int = BatchPriority.NORMAL,
        timeout: float | None = None,
    ) -> Any:
        """Queue ``item`` and await its result, without blocking the event loop.

        A full queue is waited for asynchronously, up to ``timeout`` seconds
        (then :class:`QueueFullError`). Cancelling the awaiting task before the
        item's batch is taken skips the item.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        request = self._request(item, future, priority, timeout, loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        while (waiter := self._push_or_wait(request, loop)) is not None:
            try:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(waiter, remaining)
            except BaseException as exc:
                self._forget_waiter(waiter)
                if isinstance(exc, asyncio.TimeoutError):
                    raise self._full_error(timeout) from None
                raise
        return await future

    def _request(
        self,
        item: Any,
        future: Future[Any] | asyncio.Future[Any] | None,
        priority: object,
        timeout: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Request:
        check_seconds("timeout", timeout, call=True)
        level = priority if type(priority) is BatchPriority else BatchPriority.coerce(priority)
        key, rows = describe_item(item)
        return Request(item, future, int(level), 0.0, key, rows, loop)

    def _full_error(self, timeout: float | None) -> QueueFullError:
        return QueueFullError(
            f"the adaptive batch queue is full ({self.config.max_queue_size} items) and no "
            f"room freed within timeout={timeout}s: process_func is falling behind the "
            "producers; raise max_queue_size, pass a longer timeout, or slow the producers"
        )

    def _push_locked(self, request: Request) -> bool:
        """Queue ``request`` if there is room (else False); raise if closed."""
        if self._closed_reason is not None:
            raise ProcessorStoppedError(self._closed_reason)
        if len(self._queue) >= self.config.max_queue_size:
            return False
        request.enqueued_at = time.monotonic()
        n = self._queue.push(request)
        self._counts["total_enqueued"] += 1
        # Wake the batch thread only when it has something new to decide.
        if n == 1 or n >= self._sizer.target:
            self._work.notify()
        return True

    def _put(self, request: Request, timeout: float | None) -> None:
        with self._lock:
            if self._push_locked(request):
                return
            if threading.current_thread() is self._thread:
                # Only this thread frees room: waiting for it would never end.
                raise QueueFullError(
                    f"the adaptive batch queue is full ({self.config.max_queue_size} items) "
                    "and process_func itself is enqueueing: it cannot wait for room that only "
                    "it frees"
                )
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._push_locked(request):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._full_error(timeout)
                self._space.wait(remaining)

    def _push_or_wait(
        self, request: Request, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[None] | None:
        """Push and return None, or register (under the lock: no lost wake-up) a waiter."""
        with self._lock:
            if self._push_locked(request):
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._async_waiters.append((loop, waiter))
            return waiter

    def _forget_waiter(self, waiter: asyncio.Future[None]) -> None:
        with self._lock:
            self._async_waiters = [(lp, w) for lp, w in self._async_waiters if w is not waiter]
            # A wake-up this waiter consumed is passed on.
            if self._async_waiters and len(self._queue) < self.config.max_queue_size:
                self._wake_async_producers()

    def _wake_async_producers(self) -> None:
        waiters, self._async_waiters = self._async_waiters, []
        for loop, waiter in waiters:
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, waiter)

    def _wake_all_producers(self) -> None:
        self._space.notify_all()
        self._wake_async_producers()

    # -- control and statistics ---------------------------------------------------

    def update_batch_size(self, new_size: int) -> None:
        """Set the current batch size (adaptation continues from it)."""
        if isinstance(new_size, bool) or not isinstance(new_size, int):
            raise TypeError(f"new_size must be an int, not {new_size!r}")
        cfg = self.config
        if not cfg.min_batch_size <= new_size <= cfg.max_batch_size:
            raise ValueError(
                f"batch size {new_size} is outside [min_batch_size={cfg.min_batch_size}, "
                f"max_batch_size={cfg.max_batch_size}]: pick a size in that range"
            )
        with self._lock:
            self._sizer.target = new_size  # clamped to the cap at the next measurement
            self._work.notify()

    def get_stats(self) -> dict[str, Any]:
        """Statistics: the seed's keys, plus counters and health findings.

        Times are milliseconds. Window figures (averages, percentiles,
        ``throughput`` in items/s, ``system_load`` = share of the window spent
        in ``process_func``) cover the last ``monitoring_window`` batches and are
        0 when ``enable_monitoring`` is off; ``error_rate`` is failed items per
        processed item over the processor's life.
        """
        stats: dict[str, Any] = self._stats.get_stats()
        with self._lock:
            fit = self._sizer.model()
            stats.update(self._counts)
            stats.update(
                current_batch_size=self._sizer.target,
                latency_cap_batch_size=self._sizer.cap(),
                fixed_cost_ms=fit[0] * 1000.0 if fit else None,
                per_item_cost_ms=fit[1] * 1000.0 if fit else None,
                active_batches=0 if self.current_call() is None else 1,
                queue_size=len(self._queue),
                is_paused=self._paused,
                is_stopping=self._state in (_STOPPING, _STOPPED),
                state=self._state,
            )
        if self._health is not None:
            stats.update(self._health.snapshot())
        return stats

    # -- health hooks (called by the health thread) ----------------------------------

    def current_call(self) -> tuple[int, float, int] | None:
        """(batch id, start, items) of the call in ``process_func`` now, if any."""
        runner = self._runner
        return None if runner is None else runner.current_call

    def queue_length(self) -> int:
        """Items waiting now."""
        with self._lock:
            return len(self._queue)

    def on_memory_level(self, level: str, entering: bool) -> None:
        """Shrink or hold the batch size under memory pressure."""
        with self._lock:
            self._sizer.memory_pressure(level, entering)

    def on_queue_level(self, critical: bool) -> None:
        """Grow the batch size while the backlog is critical."""
        with self._lock:
            self._sizer.queue_pressure(critical)
            self._work.notify()

    def count_gc(self) -> None:
        """Count one garbage collection."""
        with self._lock:
            self._counts["gc_collections"] += 1

    # -- the batch thread ---------------------------------------------------------------

    def _wrapped_worker_loop(self, runner: BatchRunner) -> None:
        try:
            self._worker_loop(runner)
        except BaseException as exc:
            logger.critical("adaptive batch thread died", exc_info=True)
            reason = (
                f"the adaptive batch thread died ({exc!r}): create a new AdaptiveBatchProcessor"
            )
            with self._lock:
                self._closed_reason = reason
                left = self._queue.pop_many(len(self._queue)) + self._inflight
                self._counts["total_unprocessed"] += len(left)
                self._wake_all_producers()
            for request in left:
                fail_request(request, ProcessorStoppedError(reason), log=False)

    def _worker_loop(self, runner: BatchRunner) -> None:
        while (taken := self._next_batch(runner)) is not None:
            batch, queue_length = taken
            runner.run(batch, queue_length)
            with self._lock:
                self._inflight = []
            if self.config.enable_memory_optimization:
                self._items_since_gc += len(batch)
                if self._items_since_gc >= self.config.gc_batch_threshold:
                    self._items_since_gc = 0
                    gc.collect(1)
                    self.count_gc()

    def _next_batch(self, runner: BatchRunner) -> tuple[list[Request], int] | None:
        """Wait for the next batch to be due and take it; None when done."""
        cfg = self.config
        queue = self._queue
        with self._lock:
            while True:
                if self._abandoned.is_set():
                    return None
                n = len(queue)
                draining = self._state == _STOPPING
                if n == 0 and draining:
                    return None
                if n == 0 or (self._paused and not draining):
                    self._work.wait()
                    continue
                now = time.monotonic()
                gap = runner.last_batch_start + cfg.min_batch_interval - now
                if gap > 0:
                    self._work.wait(gap)
                    continue
                target = self._sizer.target
                full = n >= target
                if not full and not draining:
                    oldest = queue.oldest_enqueued_at()
                    assert oldest is not None  # n > 0 requests wait: one is the oldest
                    due = oldest + cfg.batch_timeout
                    if now < due:
                        self._work.wait(due - now)
                        continue
                break
            batch = queue.pop_many(target)
            if draining:
                self._counts["batches_sent_on_stop"] += 1
            else:
                self._counts["batches_sent_full" if full else "batches_sent_on_timeout"] += 1
                self._sizer.after_dispatch(len(batch), full, len(queue))
            self._inflight = batch
            self._space.notify(len(batch))
            if self._async_waiters:
                self._wake_async_producers()
            return batch, n
