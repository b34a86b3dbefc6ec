"""Where items run: on sitq workers when some serve the database, else in this process.

Both executors run :func:`sitq.workflow.kinds.run_item`, which does an item's
retries itself, so an item's attempts are the same wherever it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sitq import TaskNotFound, TaskQueue
from sitq.backends.base import WORKER_STALE_AFTER
from sitq.task import TaskStatus
from sitq.workflow.errors import WorkflowError
from sitq.workflow.kinds import ItemCall, ItemOutcome, run_item

EXECUTORS = ("auto", "local", "workers")
#: Threads of the in-process executor (each step's own limit applies below it).
LOCAL_THREADS = 64
#: The longest the worker executor waits before looking for finished tasks again.
RESULT_POLL = 0.02
#: Bounds how long an item's thread waits for its attempt to be recorded.
ATTEMPT_RECORD_TIMEOUT = 300.0
#: How often a resume that waits for a running task of a killed run looks at it again.
ADOPT_RECHECK = 5.0


class Executor(Protocol):
    """Runs ItemCalls somewhere and returns their outcomes."""

    name: str

    async def run(
        self,
        call: ItemCall,
        on_submitted: Callable[[str], Awaitable[None]],
        on_attempt: Callable[[int], Awaitable[None]],
    ) -> ItemOutcome:
        """Run one item to its outcome. ``on_submitted(task_id)`` and ``on_attempt(n)``
        (for attempts after the first, which is recorded with the item's start) are
        awaited, since they record state, before the item goes on."""
        ...

    async def adopt(self, task_id: str) -> ItemOutcome | None:
        """The outcome of an item a killed run had already handed over, or None if it
        must run again."""
        ...

    async def close(self) -> None:
        """Release what the executor holds."""
        ...


async def adopt_task(
    queue: TaskQueue, task_id: str, recheck: float = ADOPT_RECHECK
) -> ItemOutcome | None:
    """The outcome of an item a killed run had enqueued as task ``task_id``, for a
    resume that runs items here; None when the item must run again.

    A task that succeeded gives its outcome (an item that failed all its attempts,
    or a task that failed, is redone with its retry policy); one still queued is
    cancelled and redone here, unless a worker claims it first, which is then
    waited for, as is a running one.
    """
    while True:
        try:
            status = await queue.status(task_id)
            if status is TaskStatus.QUEUED:
                if await queue.cancel_many([task_id]):
                    return None  # it will not run: the item runs here
                continue  # a worker took it meanwhile
            if status.finished:
                result = await queue.get_result(task_id, timeout=0)
            else:
                # Running: wait for it (looking again now and then, since a
                # task whose worker died goes back to the queue).
                result = await queue.get_result(task_id, timeout=recheck)
        except TaskNotFound:
            return None  # pruned or never committed
        if result is not None:
            outcome = _outcome(result)
            return outcome if outcome.ok else None


class LocalExecutor:
    """Runs items in threads of this process. With ``queue`` (the run's database),
    a resume adopts the tasks a killed run had enqueued (see :func:`adopt_task`)."""

    name = "local"

    def __init__(self, queue: TaskQueue | None = None) -> None:
        self._queue = queue
        self._pool = ThreadPoolExecutor(LOCAL_THREADS, thread_name_prefix="sitq-workflow")

    async def run(
        self,
        call: ItemCall,
        on_submitted: Callable[[str], Awaitable[None]],
        on_attempt: Callable[[int], Awaitable[None]],
    ) -> ItemOutcome:
        """Run ``call`` in a thread; each attempt starts once the loop has recorded it."""
        loop = asyncio.get_running_loop()

        def attempt(n: int) -> None:
            # Wait for the record: an attempt is never running unrecorded.
            if n > 1:
                recorded = asyncio.run_coroutine_threadsafe(on_attempt(n), loop)
                recorded.result(ATTEMPT_RECORD_TIMEOUT)

        return await loop.run_in_executor(self._pool, run_item, call, attempt)

    async def adopt(self, task_id: str) -> ItemOutcome | None:
        """A succeeded task's outcome; a queued one is cancelled and runs here again."""
        if self._queue is None:
            return None
        return await adopt_task(self._queue, task_id)

    async def close(self) -> None:
        """Wait for the threads (a killed item's thread cannot be stopped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class WorkerExecutor:
    """Enqueues items as sitq tasks and collects their results.

    Items submitted in the same turn of the event loop go in one
    ``enqueue_many``; one poller collects the results of all pending tasks.
    """

    name = "workers"

    def __init__(self, queue: TaskQueue, queue_name: str = "default") -> None:
        self.queue = queue
        self._enqueuer = queue.with_options(queue=queue_name)
        self._to_submit: list[tuple[ItemCall, asyncio.Future[str]]] = []
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def run(
        self,
        call: ItemCall,
        on_submitted: Callable[[str], Awaitable[None]],
        on_attempt: Callable[[int], Awaitable[None]],
    ) -> ItemOutcome:
        """Enqueue ``call`` and wait for its task's result."""
        loop = asyncio.get_running_loop()
        submitted: asyncio.Future[str] = loop.create_future()
        if not self._to_submit:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        self._to_submit.append((call, submitted))
        task_id = await submitted
        await on_submitted(task_id)
        return _outcome(await self._wait(task_id))

    async def _flush(self) -> None:
        batch, self._to_submit = self._to_submit, []
        if not batch:
            return
        try:
            ids = await self._enqueuer.enqueue_many(run_item, [call for call, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), task_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(task_id)

    async def _wait(self, task_id: str) -> Any:
        future = self._waiting.get(task_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[task_id] = future
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        return await future

    async def _poll(self) -> None:
        while self._waiting:
            try:
                results = await self.queue.get_results(list(self._waiting))
            except Exception as exc:
                for future in self._waiting.values():
                    if not future.done():
                        future.set_exception(exc)
                self._waiting.clear()
                return
            for task_id, result in results.items():
                future = self._waiting.pop(task_id)
                if not future.done():
                    future.set_result(result)
            if self._waiting:
                # Wake as soon as the oldest finishes (get_result listens for the
                # backend's wake-ups), or after RESULT_POLL for the others.
                with contextlib.suppress(TaskNotFound):
                    await self.queue.get_result(next(iter(self._waiting)), timeout=RESULT_POLL)

    async def adopt(self, task_id: str) -> ItemOutcome | None:
        """Wait for a task a killed run enqueued; None if it is gone or did not succeed."""
        try:
            await self.queue.status(task_id)
        except TaskNotFound:
            return None
        outcome = _outcome(await self._wait(task_id))
        return outcome if outcome.ok else None

    async def close(self) -> None:
        """Stop polling (the queue belongs to the caller)."""
        if self._poller is not None:
            self._poller.cancel()


def _outcome(result: Any) -> ItemOutcome:
    """An item's outcome from its task's Result."""
    if result.ok and isinstance(result.value, ItemOutcome):
        return result.value
    return ItemOutcome(
        ok=False,
        error=result.error or f"the task ended {result.status.value}",
        traceback=result.traceback,
        attempts=result.attempts,
    )


async def live_workers(queue: TaskQueue, queue_name: str) -> int:
    """How many live workers serve ``queue_name`` (as ``sitq status`` counts them)."""
    backend = queue.backend
    now = backend.now()
    workers = await backend.list_workers()
    return sum(1 for w in workers if w.alive(now, WORKER_STALE_AFTER) and queue_name in w.queues)


async def open_executor(mode: str, queue: TaskQueue, queue_name: str = "default") -> Executor:
    """The executor for ``mode``: ``workers`` (fails without live workers on the
    queue's database), ``local``, or ``auto`` (workers when some serve
    ``queue_name``, else local). ``queue`` is connected and stays the caller's."""
    if mode not in EXECUTORS:
        raise WorkflowError(f"unknown executor {mode!r}; use one of {', '.join(EXECUTORS)}")
    if mode == "local":
        return LocalExecutor(queue)
    if await live_workers(queue, queue_name):
        return WorkerExecutor(queue, queue_name)
    if mode == "workers":
        where = queue.backend.describe()
        raise WorkflowError(
            f"no live sitq worker serves queue {queue_name!r} on {where}: start one with "
            "`sitq worker --db ...` on that database, or run the items here with "
            "--executor local"
        )
    return LocalExecutor(queue)
