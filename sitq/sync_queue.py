"""SyncTaskQueue: the producer API for code that is not async.

A face with no logic of its own: each method runs the TaskQueue method of the
same name on the queue's event-loop thread (a :class:`~sitq.bridge.LoopThread`)
and returns its result; enqueues go through the Enqueuer's blocking calls,
which store on the caller's thread when the backend can.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Any, Concatenate, ParamSpec, TypeVar

from sitq.bridge import LoopThread, run_inline, runs_event_loop
from sitq.canvas import Composable, Signature
from sitq.enqueuer import Alongside, Enqueuer
from sitq.errors import ConfigurationError, NotConnected
from sitq.queue import StorageTarget, TaskQueue
from sitq.serialization import Serializer
from sitq.sqlfiles import Dialect
from sitq.store import StoreSession, StoreTransaction
from sitq.transactional import ConnectionEnqueuer
from sitq.watch import WatchEvent

T = TypeVar("T")
P = ParamSpec("P")


def _blocking(
    method: Callable[Concatenate[TaskQueue, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncTaskQueue, P], T]:
    """The blocking face of a TaskQueue method: the same call, run on the queue's loop."""

    def call(self: SyncTaskQueue, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.run(method(self.async_queue, *args, **kwargs))

    call.__name__ = call.__qualname__ = method.__name__
    call.__doc__ = f"Like :meth:`TaskQueue.{method.__name__}` (blocking)."
    return call


class SyncEnqueuer:
    """The blocking face of an :class:`~sitq.enqueuer.Enqueuer`: a SyncTaskQueue
    (the default options) and what its ``with_options`` returns."""

    def __init__(self, owner: SyncTaskQueue, enqueuer: Enqueuer) -> None:
        self._owner = owner
        self._enqueuer = enqueuer

    def with_options(self, **options: Any) -> SyncEnqueuer:
        """Like :meth:`TaskQueue.with_options`."""
        return SyncEnqueuer(self._owner, self._enqueuer.with_options(**options))

    def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Like :meth:`TaskQueue.enqueue` (blocking)."""
        self._owner.connect()  # the loop itself is used only if needed
        return self._enqueuer.enqueue_blocking(self._owner.run, fn, *args, **kwargs)

    def enqueue_many(
        self, fn: Callable[..., Any], items: Iterable[Any], /, *, alongside: Alongside | None = None
    ) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many` (blocking)."""
        self._owner.connect()
        return self._enqueuer.enqueue_many_blocking(self._owner.run, fn, items, alongside=alongside)

    def signature(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Signature:
        """Like :meth:`TaskQueue.signature`."""
        return self._enqueuer.signature(fn, *args, **kwargs)

    def submit(self, composition: Composable) -> str:
        """Like :meth:`TaskQueue.submit` (blocking)."""
        return self._owner.run(self._enqueuer.submit(composition))


class SyncConnectionEnqueuer:
    """What :meth:`SyncTaskQueue.using` returns: a blocking connection's enqueuer
    (:class:`~sitq.transactional.ConnectionEnqueuer`) driven on the caller's own
    thread, where the connection lives; ``with`` commits, then wakes the workers
    (or rolls back if the block raises)."""

    def __init__(
        self, owner: SyncTaskQueue, root: ConnectionEnqueuer, enqueuer: Enqueuer | None = None
    ) -> None:
        self._owner = owner
        self._root = root
        self._enqueuer = enqueuer or root

    def _ready(self) -> None:
        # The queue's side of the check (its database) is read on the queue's loop;
        # everything on the connection itself runs here.
        self._owner.connect()
        if not self._root.prepared:
            self._owner.run(self._root.prepare())

    def with_options(self, **options: Any) -> SyncConnectionEnqueuer:
        """Like :meth:`TaskQueue.with_options`, on the same connection."""
        return SyncConnectionEnqueuer(
            self._owner, self._root, self._enqueuer.with_options(**options)
        )

    def enqueue(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Like :meth:`TaskQueue.enqueue`, in the connection's transaction."""
        self._ready()
        return run_inline(self._enqueuer.enqueue(fn, *args, **kwargs))

    def enqueue_many(self, fn: Callable[..., Any], items: Iterable[Any], /) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many`, in the connection's transaction."""
        self._ready()
        return run_inline(self._enqueuer.enqueue_many(fn, items))

    def signature(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Signature:
        """Like :meth:`TaskQueue.signature`."""
        return self._enqueuer.signature(fn, *args, **kwargs)

    def submit(self, composition: Composable) -> str:
        """Like :meth:`TaskQueue.submit`, in the connection's transaction."""
        self._ready()
        return run_inline(self._enqueuer.submit(composition))

    def wake_workers(self) -> None:
        """Like :meth:`ConnectionEnqueuer.wake_workers`: after your commit, on SQLite."""
        self._root.wake_workers()

    def __enter__(self) -> SyncConnectionEnqueuer:
        self._ready()
        run_inline(self._root.begin())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        run_inline(self._root.commit() if exc_type is None else self._root.rollback())


class SyncTaskQueue(SyncEnqueuer):
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
        super().__init__(self, self._queue)
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
            self.connect()
        except BaseException:
            coro.close()  # never awaited: close it so Python does not warn
            raise
        return self._loop.run(coro)

    def connect(self) -> None:
        """Open the backend now (otherwise the first call does). Refuses to run
        on a thread that runs an event loop."""
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

    def close(self) -> None:
        """Close the backend and stop the background loop; never hangs (see
        :meth:`sitq.bridge.LoopThread.close`)."""
        self._closed = True
        self._loop.close(self._queue.close())

    def __enter__(self) -> SyncTaskQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def using(self, connection: Any) -> SyncConnectionEnqueuer:
        """Like :meth:`TaskQueue.using`, for a blocking driver's connection (a
        ``sqlite3`` one, or psycopg's ``Connection``), used on the calling thread."""
        root = self._queue.using(connection)
        if not root.blocking:
            raise ConfigurationError(
                f"SyncTaskQueue.using() takes a blocking connection (sqlite3, psycopg's "
                f"Connection); a {type(connection).__module__}.{type(connection).__qualname__} "
                "needs an event loop: use TaskQueue.using in async code"
            )
        return SyncConnectionEnqueuer(self, root)

    def wake_workers(self) -> None:
        """Like :meth:`TaskQueue.wake_workers`."""
        self._queue.wake_workers()

    def describe(self) -> str:
        """Like :meth:`TaskQueue.describe` (no database call)."""
        return self._queue.describe()

    def store_session(self) -> StoreSession:
        """Like :meth:`TaskQueue.store_session`; it may be awaited from any event
        loop (each call runs on this queue's own loop, where its backend lives)."""
        self.connect()
        return _LoopSession(self._loop, self._queue.store_session())

    def watch(
        self,
        task_ids: Sequence[str],
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        skip_missing: bool = False,
    ) -> Iterator[WatchEvent]:
        """Like :meth:`TaskQueue.watch`, as a plain iterator (each step runs on the
        queue's loop)."""
        self.connect()
        events = self._queue.watch(
            task_ids, timeout=timeout, poll_interval=poll_interval, skip_missing=skip_missing
        )
        return self._iterate(events)

    def watch_looks(
        self,
        task_ids: Sequence[str],
        *,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        skip_missing: bool = False,
    ) -> Iterator[list[WatchEvent]]:
        """Like :meth:`TaskQueue.watch_looks`, as a plain iterator (each look runs
        on the queue's loop)."""
        self.connect()
        looks = self._queue.watch_looks(
            task_ids, timeout=timeout, poll_interval=poll_interval, skip_missing=skip_missing
        )
        return self._iterate(looks)

    def _iterate(self, events: AsyncGenerator[T, None]) -> Iterator[T]:
        try:
            while (event := self.run(_next(events))) is not None:
                yield event
        finally:
            if not self._closed:
                self.run(_await(events.aclose()))  # its cleanup runs on the loop

    get_result = _blocking(TaskQueue.get_result)
    progress = _blocking(TaskQueue.progress)
    get_results = _blocking(TaskQueue.get_results)
    status = _blocking(TaskQueue.status)
    task_links = _blocking(TaskQueue.task_links)
    statuses = _blocking(TaskQueue.statuses)
    status_counts = _blocking(TaskQueue.status_counts)
    cancel = _blocking(TaskQueue.cancel)
    cancel_many = _blocking(TaskQueue.cancel_many)
    request_cancel = _blocking(TaskQueue.request_cancel)
    retry = _blocking(TaskQueue.retry)
    retry_many = _blocking(TaskQueue.retry_many)
    retry_failed = _blocking(TaskQueue.retry_failed)
    purge = _blocking(TaskQueue.purge)
    task_record = _blocking(TaskQueue.task_record)
    overview = _blocking(TaskQueue.overview)
    stats = _blocking(TaskQueue.stats)
    wait_for_results = _blocking(TaskQueue.wait_for_results)
    list_tasks = _blocking(TaskQueue.list_tasks)


async def _next(events: AsyncGenerator[T, None]) -> T | None:
    return await anext(events, None)


async def _await(step: Awaitable[T]) -> T:
    return await step


class _LoopSession:
    """A SyncTaskQueue's StoreSession, usable from any event loop: each call runs
    on the queue's loop (where its backend lives) and is awaited from the caller's."""

    def __init__(self, loop: LoopThread, session: StoreSession) -> None:
        self._loop = loop
        self._session = session
        self.dialect: Dialect = session.dialect
        self.now = session.now
        self.describe = session.describe
        self.array = session.array

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

    async def keep_text_ids(self) -> bool:
        """As the queue's session, on its loop."""
        return await self._on_queue_loop(self._session.keep_text_ids())
