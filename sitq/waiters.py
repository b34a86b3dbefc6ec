"""One poll loop for every ``get_result`` waiting on a queue in this process.

Each waiter used to look up its own task on every wake-up: 1,000 idle waiters
made 20,000 queries a second. Here waiters park a future per task id, and one
loop reads the status of every waited-for id in one query
(``Backend.task_statuses``) after each wake-up, or every ``interval`` seconds,
then loads the records of the tasks that finished and settles their futures.
While the database cannot be reached (a server restart), the loop keeps trying
with a backoff instead of failing the waiters: each waiter decides at its own
deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sitq.backends.base import Backend, TaskRecord
from sitq.backends.common import translate_error
from sitq.errors import DatabaseUnavailable, NotConnected, SitqError, TaskNotFound

logger = logging.getLogger("sitq.queue")

#: The longest pause between tries while the database is unreachable.
MAX_RETRY_PAUSE = 1.0
#: Up to this many waited-for tasks, their whole records are read in one query;
#: beyond it, their statuses first (most of them have not finished).
READ_WHOLE_UP_TO = 16


class ResultWaiters:
    """Futures of finished task records, settled by one shared poll loop.

    :param backend: where tasks are looked up.
    :param finished: whether a task of that id and stored status has finished
        (raises a SitqError for a status sitq never writes).
    :param interval: the longest wait between looks when no wake-up arrives.
    """

    def __init__(
        self,
        backend: Backend,
        finished: Callable[[str, str], bool],
        interval: float,
    ) -> None:
        self._backend = backend
        self._finished = finished
        self._interval = interval
        self._waiting: dict[str, list[asyncio.Future[TaskRecord]]] = {}
        self._poller: asyncio.Task[None] | None = None
        #: The error of the last look if it found the database unreachable.
        self.unavailable: DatabaseUnavailable | None = None

    async def wait(self, task_id: str, timeout: float | None) -> TaskRecord | None:
        """The task's record once it has finished; None after ``timeout`` seconds.

        If the database was unreachable at the last look when the time is up,
        raise that DatabaseUnavailable rather than claim the task is unfinished.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TaskRecord] = loop.create_future()
        self._waiting.setdefault(task_id, []).append(future)
        if self._poller is None or self._poller.done() or self._poller.get_loop() is not loop:
            self._poller = loop.create_task(self._poll(), name="sitq-result-waiters")
        try:
            done, _ = await asyncio.wait([future], timeout=timeout)
            if done:
                return future.result()
            if self.unavailable is not None:
                raise self.unavailable
            return None
        finally:
            self._forget(task_id, future)

    async def close(self) -> None:
        """Stop the poll loop; whoever still waits gets NotConnected."""
        self._fail_all(NotConnected("the queue was closed while waiting for this result"))
        poller, self._poller = self._poller, None
        if poller is not None and not poller.done():
            poller.cancel()
            if poller.get_loop() is asyncio.get_running_loop():
                await asyncio.wait([poller])

    def _forget(self, task_id: str, future: asyncio.Future[TaskRecord]) -> None:
        futures = self._waiting.get(task_id)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiting[task_id]
        if not future.done():
            future.cancel()

    async def _poll(self) -> None:
        """Until no one waits: wait for a wake-up, then look up every waited-for id.

        A waiter checked its task just before it began to wait, so the loop
        starts by waiting."""
        pause = self._interval
        while self._waiting:
            try:
                await self._backend.wait_for_change("results", pause)
                ids = list(self._waiting)
                if len(ids) <= READ_WHOLE_UP_TO:  # one query, as a lone waiter did
                    records = await self._backend.get_tasks(ids)
                    statuses = {i: r.status for i, r in records.items()}
                    done = [i for i in ids if self._done(i, statuses.get(i))]
                else:  # statuses only, then the records of those that finished
                    statuses = await self._backend.task_statuses(ids)
                    done = [i for i in ids if self._done(i, statuses.get(i))]
                    records = await self._backend.get_tasks(done) if done else {}
            except Exception as exc:
                error = translate_error(exc, self._backend) or exc
                if isinstance(error, DatabaseUnavailable):
                    if self.unavailable is None:
                        logger.warning("waiting for results: %s; retrying", error)
                    self.unavailable = error
                    pause = min(pause * 2, MAX_RETRY_PAUSE)
                    continue
                self._fail_all(error)
                return
            if self.unavailable is not None:
                logger.info("waiting for results: the database is reachable again")
                self.unavailable = None
            pause = self._interval
            for task_id in done:
                record = records.get(task_id)
                self._settle(task_id, record or TaskNotFound(task_id))

    def _done(self, task_id: str, status: str | None) -> bool:
        """Whether the waiters of ``task_id`` can be settled now: it finished, or
        it is gone (purged or pruned while waited for), or its row is corrupt."""
        if status is None:
            return True
        try:
            return self._finished(task_id, status)
        except SitqError:
            return True  # its record raises the same error when settled

    def _settle(self, task_id: str, outcome: TaskRecord | BaseException) -> None:
        futures = self._waiting.pop(task_id, [])
        for future in futures:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fail_all(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(error)
