"""SyncTaskQueue: the producer API for code that is not async.

A thin blocking face over :class:`~sitq.TaskQueue`: each method runs the
TaskQueue method of the same name on the queue's event-loop thread (a
:class:`~sitq.bridge.LoopThread`) and returns its result. Enqueues on SQLite
skip that thread and insert on the caller's (``enqueue_blocking``, in queue.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from sitq.backends.base import TaskPage, TaskRecord
from sitq.bridge import LoopThread, RunOnLoop, runs_event_loop
from sitq.errors import ConfigurationError, NotConnected
from sitq.overview import Overview
from sitq.queue import FINISHED_VALUES, Alongside, StorageTarget, TaskQueue
from sitq.records import CancelOutcome
from sitq.serialization import Serializer
from sitq.sqlfiles import Dialect
from sitq.store import StoreSession, StoreTransaction
from sitq.task import Result, TaskStatus

T = TypeVar("T")


class _Enqueuer(Protocol):
    """What SyncTaskQueue uses of ``TaskQueue.with_options(...)``."""

    def with_options(self, **options: Any) -> _Enqueuer: ...

    def enqueue_blocking(
        self, run: RunOnLoop, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> str: ...

    def enqueue_many_blocking(
        self, run: RunOnLoop, fn: Callable[..., Any], items: Iterable[Any], /
    ) -> list[str]: ...

    def enqueue_many(
        self, fn: Callable[..., Any], items: Iterable[Any], /, *, alongside: Alongside | None = None
    ) -> Coroutine[Any, Any, list[str]]: ...


class SyncTaskQueue:
    """The producer API for code that is not async.

    Runs a :class:`TaskQueue` on an event loop in a background thread; every
    method blocks until done. Accepts the same arguments as :class:`TaskQueue`
    (``create=False`` opens an existing database only) and connects on first use.
    """

    def __init__(
        self,
        backend: StorageTarget = None,
        serializer: Serializer | None = None,
        *,
        create: bool = True,
    ) -> None:
        self._queue = TaskQueue(backend, serializer, create=create)
        self._default = SyncEnqueuer(self, self._queue.with_options())
        self._loop = LoopThread("sitq-sync-queue")
        self._connect_lock = threading.Lock()
        self._connected = False
        self._closed = False

    @property
    def async_queue(self) -> TaskQueue:
        """The TaskQueue this face drives. Await its methods only through :meth:`run`:
        its backend belongs to this queue's event loop."""
        return self._queue

    def run(self, coro: Coroutine[Any, Any, T], /) -> T:
        """Run ``coro`` on this queue's event loop (connected first) and return its
        result: the one bridge for blocking faces built on the async layers
        (``SyncBatchProcessor``, a pipeline executed on this queue)."""
        try:
            self._ready()
        except BaseException:
            coro.close()  # never awaited: close it so Python does not warn
            raise
        return self._loop.run(coro)

    def _ready(self) -> None:
        """Refuse to block an event loop; connect on first use."""
        if runs_event_loop():
            # Blocking here would stall that loop (and deadlock it if a result
            # could only come from a task on it).
            raise ConfigurationError(
                "SyncTaskQueue blocks, and this thread runs an event loop: in async code "
                "use TaskQueue (`async with TaskQueue(...) as queue: await "
                "queue.enqueue(...)`), or call the SyncTaskQueue from a thread "
                "(`await asyncio.to_thread(queue.enqueue, fn, ...)`)"
            )
        if self._closed:
            raise NotConnected("this SyncTaskQueue is closed")
        if not self._connected:
            with self._connect_lock:
                if not self._connected:
                    self._loop.run(self._queue.connect())
                    self._connected = True

    def connect(self) -> None:
        """Open the backend now (otherwise the first call does)."""
        self._ready()

    def close(self) -> None:
        """Close the backend and stop the background loop; never hangs (see
        :meth:`sitq.bridge.LoopThread.close`)."""
        self._closed = True
        self._loop.close(self._queue.close())

    def __enter__(self) -> SyncTaskQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- enqueueing ---------------------------------------------------------

    def with_options(self, **options: Any) -> SyncEnqueuer:
        """Like :meth:`TaskQueue.with_options`."""
        return self._default.with_options(**options)

    def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Like :meth:`TaskQueue.enqueue`."""
        return self._default.enqueue(fn, *args, **kwargs)

    def enqueue_many(
        self, fn: Callable[..., Any], items: Iterable[Any], /, *, alongside: Alongside | None = None
    ) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many`."""
        return self._default.enqueue_many(fn, items, alongside=alongside)

    def store_session(self) -> StoreSession:
        """Like :meth:`TaskQueue.store_session`; it may be awaited from any event
        loop (each call runs on this queue's own loop, where its backend lives)."""
        self._ready()
        return _LoopSession(self._loop, self._queue.store_session())

    # -- results and control (each: the TaskQueue method, run on the loop) ---

    def get_result(self, task_id: str, timeout: float | None = None) -> Result | None:
        """Like :meth:`TaskQueue.get_result`."""
        return self.run(self._queue.get_result(task_id, timeout))

    def get_results(self, task_ids: Sequence[str]) -> dict[str, Result]:
        """Like :meth:`TaskQueue.get_results`."""
        return self.run(self._queue.get_results(task_ids))

    def status(self, task_id: str) -> TaskStatus:
        """Like :meth:`TaskQueue.status`."""
        return self.run(self._queue.status(task_id))

    def cancel(self, task_id: str) -> bool:
        """Like :meth:`TaskQueue.cancel`."""
        return self.run(self._queue.cancel(task_id))

    def retry(self, task_id: str) -> bool:
        """Like :meth:`TaskQueue.retry`."""
        return self.run(self._queue.retry(task_id))

    def request_cancel(self, task_id: str) -> CancelOutcome:
        """Like :meth:`TaskQueue.request_cancel`."""
        return self.run(self._queue.request_cancel(task_id))

    def retry_failed(self, queue: str | None = None) -> int:
        """Like :meth:`TaskQueue.retry_failed`."""
        return self.run(self._queue.retry_failed(queue))

    def purge(
        self,
        statuses: Sequence[TaskStatus | str] = FINISHED_VALUES,
        *,
        queue: str | None = None,
        older_than: float | None = None,
    ) -> int:
        """Like :meth:`TaskQueue.purge`."""
        return self.run(self._queue.purge(statuses, queue=queue, older_than=older_than))

    def task_record(
        self, task_id: str, *, payload: bool = False, result: bool = True
    ) -> TaskRecord | None:
        """Like :meth:`TaskQueue.task_record`."""
        return self.run(self._queue.task_record(task_id, payload=payload, result=result))

    def overview(self, *, failures: int = 5, counts: bool = True) -> Overview:
        """Like :meth:`TaskQueue.overview`."""
        return self.run(self._queue.overview(failures=failures, counts=counts))

    def stats(self) -> dict[str, Any]:
        """Like :meth:`TaskQueue.stats`."""
        return self.run(self._queue.stats())

    def describe(self) -> str:
        """Like :meth:`TaskQueue.describe` (no database call)."""
        return self._queue.describe()

    def status_counts(self, task_ids: Sequence[str]) -> dict[str, int]:
        """Like :meth:`TaskQueue.status_counts`."""
        return self.run(self._queue.status_counts(task_ids))

    def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        """Like :meth:`TaskQueue.statuses`."""
        return self.run(self._queue.statuses(task_ids))

    def retry_many(self, task_ids: Sequence[str]) -> int:
        """Like :meth:`TaskQueue.retry_many`."""
        return self.run(self._queue.retry_many(task_ids))

    def cancel_many(self, task_ids: Sequence[str]) -> list[str]:
        """Like :meth:`TaskQueue.cancel_many`."""
        return self.run(self._queue.cancel_many(task_ids))

    def wait_for_results(self, timeout: float) -> None:
        """Like :meth:`TaskQueue.wait_for_results` (blocks the calling thread)."""
        self.run(self._queue.wait_for_results(timeout))

    def list_tasks(
        self,
        *,
        queue: str | None = None,
        status: TaskStatus | str | None = None,
        batch_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """Like :meth:`TaskQueue.list_tasks`."""
        return self.run(
            self._queue.list_tasks(
                queue=queue, status=status, batch_id=batch_id, cursor=cursor, limit=limit
            )
        )


class SyncEnqueuer:
    """What :meth:`SyncTaskQueue.with_options` returns: its enqueue methods, with
    those options (the blocking face of ``TaskQueue.with_options(...)``)."""

    def __init__(self, owner: SyncTaskQueue, enqueuer: _Enqueuer) -> None:
        self._owner = owner
        self._enqueuer = enqueuer

    def with_options(self, **options: Any) -> SyncEnqueuer:
        """Further options."""
        return SyncEnqueuer(self._owner, self._enqueuer.with_options(**options))

    def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Like :meth:`TaskQueue.enqueue`, with these options."""
        self._owner.connect()  # the checks of run(); the loop is used only if needed
        return self._enqueuer.enqueue_blocking(self._owner._loop.run, fn, *args, **kwargs)

    def enqueue_many(
        self, fn: Callable[..., Any], items: Iterable[Any], /, *, alongside: Alongside | None = None
    ) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many`, with these options."""
        if alongside is not None:  # a layer's rows in the same transaction: on the loop
            return self._owner.run(self._enqueuer.enqueue_many(fn, items, alongside=alongside))
        self._owner.connect()
        return self._enqueuer.enqueue_many_blocking(self._owner._loop.run, fn, items)


class _LoopSession:
    """A SyncTaskQueue's StoreSession, usable from any event loop: each call runs
    on the queue's loop (where its backend lives) and is awaited from the caller's."""

    def __init__(self, loop: LoopThread, session: StoreSession) -> None:
        self._loop = loop
        self._session = session

    @property
    def dialect(self) -> Dialect:
        """As the queue's session."""
        return self._session.dialect

    def now(self) -> float:
        """As the queue's session."""
        return self._session.now()

    def describe(self) -> str:
        """As the queue's session."""
        return self._session.describe()

    def array(self, values: Sequence[Any]) -> Any:
        """As the queue's session."""
        return self._session.array(values)

    async def _on_queue_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self._loop.submit(coro))

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """As the queue's session, on its loop."""
        return await self._on_queue_loop(self._session.fetch(sql, params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """As the queue's session, on its loop."""
        return await self._on_queue_loop(self._session.execute(sql, params))

    async def transaction(self, body: Callable[[StoreTransaction], Awaitable[T]]) -> T:
        """As the queue's session, on its loop (``body`` runs there)."""
        return await self._on_queue_loop(self._session.transaction(body))

    async def write_soon(self, sql: str, params: Sequence[Any] = ()) -> None:
        """As the queue's session, on its loop."""
        await self._on_queue_loop(self._session.write_soon(sql, params))
