"""Where items run: on sitq workers when some serve the database, else in this process.

Both executors run :func:`sitq.workflow.kinds.run_item`, which does an item's
retries itself, so an item's attempts are the same wherever it runs. Workers run
it through :func:`~sitq.workflow.kinds.run_item_task`, so that the task of an
item that failed ends FAILED with the item's error.
:mod:`sitq.pipeline.executors` is the same idea for a pipeline's instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sitq import TaskNotFound, TaskQueue
from sitq.task import TaskStatus
from sitq.workflow.errors import WorkflowError
from sitq.workflow.kinds import (
    ItemCall,
    ItemOutcome,
    failed_item_outcome,
    run_item,
    run_item_task,
)
from sitq.workflow.names import env_number
from sitq.workflow.store import process_alive

EXECUTORS = ("auto", "local", "workers")
#: Threads of the in-process executor (each step's own limit applies below it).
LOCAL_THREADS = 64
#: The longest the worker executor waits before looking for finished tasks again.
RESULT_POLL = 0.02
#: Bounds how long an item's thread waits for its attempt to be recorded.
ATTEMPT_RECORD_TIMEOUT = 300.0
#: How often a resume that waits for a running task of a killed run looks at it again.
ADOPT_RECHECK = 5.0
#: Seconds items wait for their tasks while no live worker serves the tasks' queue
#: before they fail (``$SITQ_WORKFLOW_NO_WORKER_GRACE`` overrides it). Their tasks
#: stay in the queue: a resume once a worker serves it again waits for them.
NO_WORKER_GRACE = 60.0
#: The longest between two looks for live workers while items wait for tasks.
WORKER_CHECK_INTERVAL = 5.0

logger = logging.getLogger("sitq.workflow")


class WorkerWatch:
    """Notices that no live worker serves a queue whose tasks items wait for.

    :meth:`stranded` looks for live workers (at most every ``interval`` seconds),
    warns once when there are none (``warn``, and the ``sitq.workflow`` logger), and
    says True once there have been none for ``grace`` seconds: the waiting items
    then fail with :meth:`outcome`, which tells how to continue.
    """

    def __init__(
        self, queue: TaskQueue, warn: Callable[[str], None] | None, resume_command: str
    ) -> None:
        self.queue = queue
        self.grace = float(
            env_number("SITQ_WORKFLOW_NO_WORKER_GRACE", NO_WORKER_GRACE, 0, "seconds")
        )
        self.interval = min(WORKER_CHECK_INTERVAL, max(self.grace / 4, 0.05))
        self.warn = warn
        #: How the run is continued, for errors.
        self.resume_command = resume_command
        self._checked: dict[str, float] = {}
        self._none_since: dict[str, float] = {}

    def _say(self, text: str, level: int = logging.WARNING) -> None:
        logger.log(level, "%s", text)
        if self.warn is not None:
            self.warn(text)

    async def stranded(self, queue_name: str) -> bool:
        """True once no live worker has served ``queue_name`` for ``grace`` seconds."""
        now = time.monotonic()
        if now - self._checked.get(queue_name, -math.inf) >= self.interval:
            self._checked[queue_name] = now
            try:
                alive = await live_workers(self.queue, queue_name)
            except Exception:
                alive = 1  # the database is away for a moment: assume nothing changed
            if alive:
                if self._none_since.pop(queue_name, None) is not None:
                    self._say(f"a live sitq worker serves queue {queue_name!r} again", logging.INFO)
                return False
            if queue_name not in self._none_since:
                self._none_since[queue_name] = now
                self._say(
                    f"warning: no live sitq worker serves queue {queue_name!r} on "
                    f"{self.queue.describe()}: workflow items wait for their tasks "
                    f"there, and fail in {self.grace:.0f}s unless a worker starts "
                    f"(`sitq worker --queue {queue_name}`)"
                )
        since = self._none_since.get(queue_name)
        return since is not None and now - since >= self.grace

    def outcome(self, queue_name: str, task_id: str) -> ItemOutcome:
        """The failed outcome of an item whose task no worker will run (it never ran here)."""
        error = (
            f"no live sitq worker served queue {queue_name!r} on "
            f"{self.queue.describe()} for {self.grace:.0f}s, so task {task_id} of "
            f"this item did not finish; the task stays in the queue: start "
            f"`sitq worker --queue {queue_name}` on that database, then continue with "
            f"{self.resume_command} (it waits for the task rather than run the item again)"
        )
        return ItemOutcome(ok=False, error=error, attempts=0)


async def _task_queue(queue: TaskQueue, task_id: str) -> str | None:
    """The queue task ``task_id`` is on; None if it is gone."""
    record = await queue.task_record(task_id, result=False)
    return None if record is None else record.queue


class ItemExecutor:
    """Runs ItemCalls somewhere and returns their outcomes. Its ``watch`` notices
    when no live worker serves a queue whose tasks items wait for."""

    name = ""

    def __init__(self, queue: TaskQueue, watch: WorkerWatch) -> None:
        self.queue = queue
        self.watch = watch

    async def run(
        self,
        call: ItemCall,
        on_submitted: Callable[[str], Awaitable[None]],
        on_attempt: Callable[[int], Coroutine[Any, Any, None]],
    ) -> ItemOutcome:
        """Run one item to its outcome. ``on_submitted(task_id)`` and ``on_attempt(n)``
        (for attempts after the first, which is recorded with the item's start) are
        awaited, since they record state, before the item goes on."""
        raise NotImplementedError

    async def adopt(self, task_id: str) -> ItemOutcome | None:
        """The outcome of an item a killed run had already handed over as task
        ``task_id``, or None if it must run again."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the executor holds (the queue stays the caller's)."""


class LocalExecutor(ItemExecutor):
    """Runs items in threads of this process; a resume adopts the tasks a killed run
    had enqueued (see :meth:`adopt`)."""

    name = "local"

    def __init__(self, queue: TaskQueue, watch: WorkerWatch) -> None:
        super().__init__(queue, watch)
        self._pool = ThreadPoolExecutor(LOCAL_THREADS, thread_name_prefix="sitq-workflow")

    async def run(
        self,
        call: ItemCall,
        on_submitted: Callable[[str], Awaitable[None]],
        on_attempt: Callable[[int], Coroutine[Any, Any, None]],
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
        """A task that succeeded gives its outcome (an item that failed all its
        attempts, or a task that failed, is redone with its retry policy); one still
        queued is cancelled and redone here, unless a worker claims it first, which is
        then waited for, as is a running one. A running task that no live worker
        serves for the grace period gives a failed outcome (its task stays)."""
        queue, recheck = self.queue, min(ADOPT_RECHECK, self.watch.interval)
        queue_name: str | None = None
        while True:
            try:
                status = await queue.status(task_id)
                if status is TaskStatus.QUEUED and await queue.cancel_many([task_id]):
                    return None  # it will not run: the item runs here
                if status.finished:
                    result = await queue.get_result(task_id, timeout=0)
                else:
                    # Running, or held by a worker (a claimed task reads queued until it
                    # starts): wait for it (looking again now and then, since a task
                    # whose worker died goes back to the queue).
                    result = await queue.get_result(task_id, timeout=recheck)
                    if result is None:
                        queue_name = queue_name or await _task_queue(queue, task_id)
                        if queue_name is not None and await self.watch.stranded(queue_name):
                            return self.watch.outcome(queue_name, task_id)
            except TaskNotFound:
                return None  # pruned or never committed
            if result is not None:
                outcome = _outcome(result)
                return outcome if outcome.ok else None

    async def close(self) -> None:
        """Let the threads go (a killed item's thread cannot be stopped)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class WorkerExecutor(ItemExecutor):
    """Enqueues items as sitq tasks and collects their results.

    Items submitted in the same turn of the event loop go in one
    ``enqueue_many``; one poller collects the results of all pending tasks. While
    tasks wait, the poller watches for live workers on their queue: when none has
    served it for the grace period (see WorkerWatch), the waiting items fail and
    their tasks stay queued for a resume.
    """

    name = "workers"

    def __init__(self, queue: TaskQueue, watch: WorkerWatch, queue_name: str) -> None:
        super().__init__(queue, watch)
        self.queue_name = queue_name
        self._enqueuer = queue.with_options(queue=queue_name)
        self._to_submit: list[tuple[ItemCall, asyncio.Future[str]]] = []
        #: Each waiting task's future result, and its queue.
        self._waiting: dict[str, tuple[asyncio.Future[Any], str]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def run(
        self,
        call: ItemCall,
        on_submitted: Callable[[str], Awaitable[None]],
        on_attempt: Callable[[int], Coroutine[Any, Any, None]],
    ) -> ItemOutcome:
        """Enqueue ``call`` and wait for its task's result."""
        loop = asyncio.get_running_loop()
        submitted: asyncio.Future[str] = loop.create_future()
        if not self._to_submit:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        self._to_submit.append((call, submitted))
        task_id = await submitted
        await on_submitted(task_id)
        return _outcome(await self._wait(task_id, self.queue_name), call)

    async def _flush(self) -> None:
        batch, self._to_submit = self._to_submit, []
        if not batch:
            return
        try:
            ids = await self._enqueuer.enqueue_many(run_item_task, [call for call, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), task_id in zip(batch, ids, strict=True):
            if not future.done():
                future.set_result(task_id)

    async def _wait(self, task_id: str, queue_name: str) -> Any:
        """The task's Result, or an ItemOutcome if no worker serves its queue."""
        if task_id not in self._waiting:
            self._waiting[task_id] = (asyncio.get_running_loop().create_future(), queue_name)
        future = self._waiting[task_id][0]
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        return await future

    async def _poll(self) -> None:
        while self._waiting:
            try:
                results = await self.queue.get_results(list(self._waiting))
            except Exception as exc:
                for future, _ in self._waiting.values():
                    if not future.done():
                        future.set_exception(exc)
                self._waiting.clear()
                return
            for task_id, result in results.items():
                self._resolve(task_id, result)
            if self._waiting:
                await self._fail_stranded()
            if self._waiting:
                # Wake as soon as the oldest finishes (get_result listens for the
                # backend's wake-ups), or after RESULT_POLL for the others.
                with contextlib.suppress(TaskNotFound):
                    await self.queue.get_result(next(iter(self._waiting)), timeout=RESULT_POLL)

    def _resolve(self, task_id: str, value: Any) -> None:
        future, _ = self._waiting.pop(task_id)
        if not future.done():
            future.set_result(value)

    async def _fail_stranded(self) -> None:
        """Fail the items waiting on a queue no live worker served for the grace period."""
        for queue_name in {name for _, name in self._waiting.values()}:
            if await self.watch.stranded(queue_name):
                for task_id, (_, name) in list(self._waiting.items()):
                    if name == queue_name:
                        self._resolve(task_id, self.watch.outcome(queue_name, task_id))

    async def adopt(self, task_id: str) -> ItemOutcome | None:
        """Wait for a task a killed run enqueued; None if it is gone or did not succeed
        (the item runs again), a failed outcome if no worker serves its queue."""
        queue_name = await _task_queue(self.queue, task_id)
        if queue_name is None:
            return None  # pruned or never committed
        result = await self._wait(task_id, queue_name)
        if isinstance(result, ItemOutcome):
            return result  # no live worker: the item fails, its task stays queued
        outcome = _outcome(result)
        return outcome if outcome.ok else None

    async def close(self) -> None:
        """Stop polling."""
        if self._poller is not None:
            self._poller.cancel()


def _outcome(result: Any, call: ItemCall | None = None) -> ItemOutcome:
    """An item's outcome from its task's Result (or the outcome given instead).

    A task of an item that failed ended FAILED through ItemFailed: its outcome is
    the item's error, and (a failed item ran every attempt of ``call``'s policy)
    its attempts."""
    if isinstance(result, ItemOutcome):
        return result
    if result.ok and isinstance(result.value, ItemOutcome):
        return result.value
    attempts = result.attempts if call is None else max(1, call.retry.max_attempts)
    return failed_item_outcome(result.error or "", attempts) or ItemOutcome(
        ok=False,
        error=result.error or f"the task ended {result.status.value}",
        traceback=result.traceback,
        attempts=result.attempts,
    )


async def live_workers(queue: TaskQueue, queue_name: str) -> int:
    """How many live workers serve ``queue_name``: those ``TaskQueue.live_workers``
    gives (heard from within WORKER_STALE_AFTER seconds), less the ones on this host
    whose process is gone (killed before their heartbeat aged)."""
    workers = await queue.live_workers(queue_name)
    return sum(process_alive(w.hostname, w.pid) is not False for w in workers)


async def open_executor(
    mode: str, queue: TaskQueue, queue_name: str, watch: WorkerWatch
) -> ItemExecutor:
    """The executor for ``mode`` (one of EXECUTORS): ``workers`` (fails without live
    workers on the queue's database), ``local``, or ``auto`` (workers when some serve
    ``queue_name``, else local). ``queue`` is connected and stays the caller's."""
    if mode != "local" and await live_workers(queue, queue_name):
        return WorkerExecutor(queue, watch, queue_name)
    if mode == "workers":
        raise WorkflowError(
            f"no live sitq worker serves queue {queue_name!r} on {queue.describe()}: start "
            "one with `sitq worker --db ...` on that database, or run the items here with "
            "--executor local"
        )
    return LocalExecutor(queue, watch)
