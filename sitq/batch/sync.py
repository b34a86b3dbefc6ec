"""SyncBatchProcessor: the batch layer for plain (non-async) code, over SyncTaskQueue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from sitq.batch.processor import Batch, BatchProcessor, IfExists, Target
from sitq.batch.progress import BatchProgress
from sitq.batch.report import DEFAULT_TRACKED_TASKS, BatchReport
from sitq.queue import TaskQueue
from sitq.sync_queue import SyncTaskQueue
from sitq.task import Result

T = TypeVar("T")


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

    def enqueue_batch(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        batch_size: int | None = None,
        *,
        batch_id: str | None = None,
        if_exists: IfExists = "error",
        **options: Any,
    ) -> list[str]:
        """Like :meth:`BatchProcessor.enqueue_batch`."""
        return self._run(
            self._processor.enqueue_batch(
                func, items, batch_size, batch_id=batch_id, if_exists=if_exists, **options
            )
        )

    def submit(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        batch_size: int | None = None,
        *,
        batch_id: str | None = None,
        if_exists: IfExists = "error",
        **options: Any,
    ) -> Batch:
        """Like :meth:`BatchProcessor.submit`."""
        return self._run(
            self._processor.submit(
                func, items, batch_size, batch_id=batch_id, if_exists=if_exists, **options
            )
        )

    def open(self, batch_id: str) -> Batch:
        """Like :meth:`BatchProcessor.open`."""
        return self._run(self._processor.open(batch_id))

    def batches(self) -> list[Batch]:
        """Like :meth:`BatchProcessor.batches`."""
        return self._run(self._processor.batches())

    def delete(self, batch_id: str) -> bool:
        """Like :meth:`BatchProcessor.delete`."""
        return self._run(self._processor.delete(batch_id))

    def progress(self, target: Target | None = None) -> BatchProgress:
        """Like :meth:`BatchProcessor.progress`."""
        return self._run(self._processor.progress(target))

    def collect_results(
        self,
        task_ids: Target | None = None,
        timeout: float | None = 30.0,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> dict[str, Result]:
        """Like :meth:`BatchProcessor.collect_results`."""
        return self._run(
            self._processor.collect_results(task_ids, timeout, poll_interval, progress)
        )

    def as_completed(
        self,
        task_ids: Target | None = None,
        timeout: float | None = None,
        *,
        poll_interval: float = 0.5,
        progress: bool = False,
    ) -> Iterator[Result]:
        """Like :meth:`BatchProcessor.as_completed`, as a plain iterator."""
        results = self._processor.as_completed(
            task_ids, timeout, poll_interval=poll_interval, progress=progress
        )
        try:
            while True:
                try:
                    yield self._run(_next(results))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(_aclose(results))

    def gather(
        self,
        task_ids: Target | None = None,
        *,
        timeout: float | None = None,
        progress: bool = True,
        return_exceptions: bool = False,
        poll_interval: float = 0.5,
    ) -> list[Any]:
        """Like :meth:`BatchProcessor.gather`."""
        return self._run(
            self._processor.gather(
                task_ids,
                timeout=timeout,
                progress=progress,
                return_exceptions=return_exceptions,
                poll_interval=poll_interval,
            )
        )

    def map(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        *,
        batch_size: int | None = None,
        timeout: float | None = None,
        progress: bool = True,
        return_exceptions: bool = False,
        batch_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """Like :meth:`BatchProcessor.map`."""
        return self._run(
            self._processor.map(
                func,
                items,
                batch_size=batch_size,
                timeout=timeout,
                progress=progress,
                return_exceptions=return_exceptions,
                batch_id=batch_id,
                options=options,
            )
        )

    def retry_failed(self, task_ids: Target | None = None) -> list[str]:
        """Like :meth:`BatchProcessor.retry_failed`."""
        return self._run(self._processor.retry_failed(task_ids))

    def cancel(self, task_ids: Target | None = None) -> list[str]:
        """Like :meth:`BatchProcessor.cancel`."""
        return self._run(self._processor.cancel(task_ids))

    def report(self) -> BatchReport:
        """Like :meth:`BatchProcessor.report`."""
        return self._processor.report()


async def _next(results: AsyncIterator[Result]) -> Result:
    return await results.__anext__()


async def _aclose(results: AsyncIterator[Result]) -> None:
    # as_completed is an async generator: closing it runs its cleanup on the loop.
    aclose = getattr(results, "aclose", None)
    if aclose is not None:
        await aclose()
