"""SyncTaskQueue: the producer API for code that is not async.

It runs a TaskQueue on a private event loop in a background thread; enqueues
on SQLite skip that loop and insert on the caller's thread.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from sitq.backends.base import Backend, TaskPage
from sitq.errors import ConfigurationError, NotConnected, SitqError
from sitq.queue import (
    Alongside,
    TaskQueue,
    _as_calls,
    _Enqueuer,
    _observed,
    _raise_translated,
)
from sitq.registry import TaskHandle
from sitq.serialization import Serializer
from sitq.sqlfiles import Dialect
from sitq.store import StoreSession, StoreTransaction
from sitq.task import OPTION_NAMES, Result, TaskStatus, check_option_keywords

T = TypeVar("T")


def _in_notebook() -> bool:
    """True in a Jupyter/IPython kernel: its cells run on the kernel's event loop,
    and a plain call in a cell blocks that loop whatever it does."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and "ZMQ" in type(shell).__name__


class SyncTaskQueue:
    """The producer API for code that is not async.

    Runs a private event loop on a background thread; every method blocks until
    done. Accepts the same arguments as :class:`TaskQueue` and connects on first use.
    """

    def __init__(
        self,
        backend: Backend | str | os.PathLike[str] | None = None,
        serializer: Serializer | None = None,
    ) -> None:
        self._queue = TaskQueue(backend, serializer)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sitq-sync-queue", daemon=True
        )
        self._thread.start()
        self._connect_lock = threading.Lock()
        self._closed = False

    @property
    def backend(self) -> Backend:
        """The backend this queue stores tasks in."""
        return self._queue.backend

    def _ensure_connected(self) -> None:
        if asyncio._get_running_loop() is not None and not _in_notebook():
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
        if not self._queue._connected:
            with self._connect_lock:
                if not self._queue._connected:
                    self._submit(self._queue.connect()).result()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self._ensure_connected()
        except BaseException:
            coro.close()
            raise
        return self._submit(coro).result()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def connect(self) -> None:
        """Open the backend now (otherwise the first call does)."""
        self._run(asyncio.sleep(0))

    def close(self) -> None:
        """Close the backend and stop the background loop."""
        if self._closed:
            return
        self._closed = True
        self._submit(self._queue.close()).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncTaskQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def with_options(self, **options: Any) -> _SyncEnqueuer:
        """Like :meth:`TaskQueue.with_options`."""
        return _SyncEnqueuer(self, self._queue.with_options(**options))

    def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Like :meth:`TaskQueue.enqueue`."""
        return self._enqueue(self._queue._default, fn, [(args, kwargs)])[0]

    def enqueue_many(
        self, fn: Callable[..., Any], items: Iterable[Any], /, *, alongside: Alongside | None = None
    ) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many`."""
        if alongside is not None:  # a layer's rows in the same transaction: on the loop
            return self._run(self._queue.enqueue_many(fn, items, alongside=alongside))
        return self._enqueue(self._queue._default, fn, _as_calls(items))

    def store_session(self) -> StoreSession:
        """Like :meth:`TaskQueue.store_session`; it may be awaited from any event
        loop (each call runs on this queue's own loop)."""
        if asyncio._get_running_loop() is None:
            self._ensure_connected()
        try:
            session = self._queue.store_session()
        except NotConnected:
            # Asked from another loop (a layer's sync face): connecting runs on this
            # queue's own loop thread, so waiting for it here cannot deadlock.
            if self._closed:
                raise
            with self._connect_lock:
                self._submit(self._queue.connect()).result()
            session = self._queue.store_session()
        return _LoopSession(self, session)

    def _enqueue(
        self,
        enqueuer: _Enqueuer,
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> list[str]:
        """Build the tasks on this thread and store them directly when the backend
        allows it (no trip through the background loop), else through the loop.
        A TaskHandle is sent by name with its registered options."""
        if isinstance(fn, TaskHandle):
            if calls and calls[0][1] and not OPTION_NAMES.isdisjoint(calls[0][1]):
                check_option_keywords(fn.fn, calls[0][1])
            enqueuer, fn = enqueuer.for_handle(fn), fn.ref
        self._ensure_connected()
        try:
            if enqueuer.options.unique_key is not None:
                if len(calls) != 1:
                    enqueuer._refuse_unique("enqueue_many")
                args, kwargs = calls[0]
                return [self._run(enqueuer._enqueue_unique(self.backend, fn, args, kwargs))]
            if _observed():
                return self._run(enqueuer._enqueue_observed(self.backend, fn, calls))
            tasks = self._queue._new_tasks(enqueuer.options, fn, calls, self.backend.now())
            if not self.backend.enqueue_blocking(tasks):
                self._run(self.backend.enqueue(tasks))
        except SitqError:
            raise
        except Exception as exc:
            _raise_translated(exc, self.backend)
            raise
        return [task.id for task in tasks]

    def get_result(self, task_id: str, timeout: float | None = None) -> Result | None:
        """Like :meth:`TaskQueue.get_result`."""
        return self._run(self._queue.get_result(task_id, timeout))

    def get_results(self, task_ids: Sequence[str]) -> dict[str, Result]:
        """Like :meth:`TaskQueue.get_results`."""
        return self._run(self._queue.get_results(task_ids))

    def status(self, task_id: str) -> TaskStatus:
        """Like :meth:`TaskQueue.status`."""
        return self._run(self._queue.status(task_id))

    def cancel(self, task_id: str) -> bool:
        """Like :meth:`TaskQueue.cancel`."""
        return self._run(self._queue.cancel(task_id))

    def retry(self, task_id: str) -> bool:
        """Like :meth:`TaskQueue.retry`."""
        return self._run(self._queue.retry(task_id))

    def stats(self) -> dict[str, Any]:
        """Like :meth:`TaskQueue.stats`."""
        return self._run(self._queue.stats())

    # -- bulk status (see TaskQueue) ---------------------------------------

    def status_counts(self, task_ids: Sequence[str]) -> dict[str, int]:
        """Like :meth:`TaskQueue.status_counts`."""
        return self._run(self._queue.status_counts(task_ids))

    def statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        """Like :meth:`TaskQueue.statuses`."""
        return self._run(self._queue.statuses(task_ids))

    def retry_many(self, task_ids: Sequence[str]) -> int:
        """Like :meth:`TaskQueue.retry_many`."""
        return self._run(self._queue.retry_many(task_ids))

    def cancel_many(self, task_ids: Sequence[str]) -> list[str]:
        """Like :meth:`TaskQueue.cancel_many`."""
        return self._run(self._queue.cancel_many(task_ids))

    def wait_for_results(self, timeout: float) -> None:
        """Like :meth:`TaskQueue.wait_for_results` (blocks the calling thread)."""
        self._run(self._queue.wait_for_results(timeout))

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
        return self._run(
            self._queue.list_tasks(
                queue=queue, status=status, batch_id=batch_id, cursor=cursor, limit=limit
            )
        )


class _SyncEnqueuer:
    """The blocking face of a queue with options."""

    def __init__(self, owner: SyncTaskQueue, enqueuer: _Enqueuer) -> None:
        self._owner = owner
        self._enqueuer = enqueuer

    def with_options(self, **options: Any) -> _SyncEnqueuer:
        """Further options."""
        return _SyncEnqueuer(self._owner, self._enqueuer.with_options(**options))

    def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Like :meth:`TaskQueue.enqueue`, with these options."""
        return self._owner._enqueue(self._enqueuer, fn, [(args, kwargs)])[0]

    def enqueue_many(
        self, fn: Callable[..., Any], items: Iterable[Any], /, *, alongside: Alongside | None = None
    ) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many`, with these options."""
        if alongside is not None:
            return self._owner._run(self._enqueuer.enqueue_many(fn, items, alongside=alongside))
        return self._owner._enqueue(self._enqueuer, fn, _as_calls(items))


class _LoopSession:
    """A SyncTaskQueue's StoreSession, usable from any event loop: each call runs on
    the queue's loop (where its backend lives) and is awaited from the caller's."""

    def __init__(self, owner: SyncTaskQueue, session: StoreSession) -> None:
        self._owner = owner
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
        # Connected when the session was made (store_session); never blocks here.
        return await asyncio.wrap_future(self._owner._submit(coro))

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
