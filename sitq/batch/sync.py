"""SyncBatchProcessor: the batch layer for plain (non-async) code, over SyncTaskQueue."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

from sitq.batch.processor import Batch, BatchProcessor
from sitq.batch.report import DEFAULT_TRACKED_TASKS, BatchReport
from sitq.queue import TaskQueue
from sitq.sync_queue import SyncTaskQueue

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[BatchProcessor, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncBatchProcessor, P], T]:
    """The blocking face of a :class:`BatchProcessor` method (same arguments and
    docstring): it runs on the queue's loop thread (:mod:`sitq.bridge`)."""

    @functools.wraps(method)
    def call(self: SyncBatchProcessor, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self._processor, *args, **kwargs))

    return call


def _iterating(
    method: Callable[Concatenate[BatchProcessor, P], AsyncGenerator[T, None]],
) -> Callable[Concatenate[SyncBatchProcessor, P], Iterator[T]]:
    """The plain-iterator face of a :class:`BatchProcessor` async generator."""

    @functools.wraps(method)
    def call(self: SyncBatchProcessor, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        steps = method(self._processor, *args, **kwargs)
        try:
            while (item := self._run(_await(anext(steps, None)))) is not None:
                yield item
        finally:
            if not self._closed:
                self._run(_await(steps.aclose()))  # runs its cleanup on the loop

    return call


class SyncBatchProcessor:
    """:class:`BatchProcessor` for scripts: the same methods, blocking.

    :param queue: a :class:`~sitq.SyncTaskQueue`.
    :param batch_size: items per enqueue transaction unless a call says otherwise.
    :param max_tracked_tasks: as for :class:`BatchProcessor`.

    Runs a BatchProcessor over the queue's TaskQueue, on the queue's own event
    loop (``SyncTaskQueue.run``). :meth:`close` (or ``with``) only stops this
    processor: the queue is not closed, it belongs to the caller.
    """

    def __init__(
        self,
        queue: SyncTaskQueue,
        batch_size: int = 100,
        *,
        max_tracked_tasks: int = DEFAULT_TRACKED_TASKS,
    ) -> None:
        if isinstance(queue, TaskQueue):
            raise TypeError(
                "SyncBatchProcessor needs a SyncTaskQueue; with an async TaskQueue use "
                "sitq.batch.BatchProcessor(queue)"
            )
        self.queue = queue
        self._processor = BatchProcessor(
            queue.async_queue, batch_size, max_tracked_tasks=max_tracked_tasks
        )
        self._closed = False

    @property
    def last(self) -> Batch | None:
        """The last batch this processor enqueued or opened."""
        return self._processor.last

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()  # never awaited: close it so Python does not warn
            raise RuntimeError("this SyncBatchProcessor is closed")
        return self.queue.run(coro)

    def close(self) -> None:
        """Refuse further calls (the queue stays open)."""
        self._closed = True

    def __enter__(self) -> SyncBatchProcessor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    enqueue_batch = _blocking(BatchProcessor.enqueue_batch)
    submit = _blocking(BatchProcessor.submit)
    open = _blocking(BatchProcessor.open)
    batches = _blocking(BatchProcessor.batches)
    delete = _blocking(BatchProcessor.delete)
    progress = _blocking(BatchProcessor.progress)
    collect_results = _blocking(BatchProcessor.collect_results)
    gather = _blocking(BatchProcessor.gather)
    map = _blocking(BatchProcessor.map)
    retry_failed = _blocking(BatchProcessor.retry_failed)
    cancel = _blocking(BatchProcessor.cancel)

    as_completed = _iterating(BatchProcessor.as_completed)

    def report(self) -> BatchReport:
        """Like :meth:`BatchProcessor.report`."""
        return self._processor.report()


async def _await(step: Awaitable[T]) -> T:
    # A step of an async generator is no coroutine: the loop thread runs coroutines.
    return await step
