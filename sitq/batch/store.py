"""Where named batches live: :class:`BatchStore`, over the queue's own database.

A named batch is an ordered list of task ids that outlives the producer.
Membership is stored in the same transaction as the tasks. A task that is
pruned or purged leaves its batches (the batch's ``size`` still counts it, so
it shows as missing); deleting a batch never deletes its tasks.

The logic is written once here; the SQL is in ``sql/sqlite.sql`` and
``sql/postgres.sql`` (loaded once at import), run through the queue's
:class:`~sitq.store.StoreSession`. The tables are created by each backend's
schema migration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sitq import checks, sqlfiles
from sitq.batch.errors import BatchSizeChanged
from sitq.errors import ConfigurationError
from sitq.store import StoreSession, StoreTransaction
from sitq.task import TaskStatus

if TYPE_CHECKING:
    from sitq.queue import TaskQueue

_SQL = sqlfiles.load_dialects("sitq.batch")

#: The longest batch id accepted.
MAX_BATCH_ID_LENGTH = 200

#: What appends tasks to a batch in the transaction that stores them.
Appender = Callable[[StoreTransaction, Sequence[str]], Awaitable[int]]


def check_batch_id(batch_id: Any) -> None:
    """Refuse a batch id that is not a non-empty string of at most 200 characters."""
    if not isinstance(batch_id, str) or not batch_id.strip():
        raise ConfigurationError(
            f"a batch id must be a non-empty string, got {batch_id!r}; name it, e.g. "
            'batch_id="nightly-2024-05-01"'
        )
    if len(batch_id) > MAX_BATCH_ID_LENGTH:
        raise ConfigurationError(
            f"batch id {batch_id[:40]!r}... is {len(batch_id)} characters long; use at most "
            f"{MAX_BATCH_ID_LENGTH}"
        )


@dataclass(frozen=True)
class StoredBatch:
    """A named batch as stored: its name, when it was created, and ``size``, the
    number of tasks ever added (including any pruned since)."""

    id: str
    created_at: float
    size: int


class BatchStore:
    """Named batches in the database of ``session`` (see the module docstring).

    Build one with :meth:`of` from a connected :class:`~sitq.TaskQueue`.
    """

    def __init__(self, session: StoreSession) -> None:
        self.session = session
        self._sql = _SQL[session.dialect]

    @classmethod
    def of(cls, queue: TaskQueue) -> BatchStore:
        """The store of ``queue``'s database."""
        return cls(queue.store_session())

    async def enqueue_in_batch(
        self,
        queue: TaskQueue,
        batch_id: str,
        fn: Callable[..., Any],
        items: Iterable[Any],
        /,
        *,
        expected_size: int | None = None,
    ) -> list[str]:
        """Like ``queue.enqueue_many`` (``queue`` may be a ``with_options`` one), and
        append the tasks to batch ``batch_id`` in the same transaction: see
        :meth:`appender`, which ``expected_size`` goes to. Ids in item order."""
        append = self.appender(batch_id, expected_size)
        return await queue.enqueue_many(fn, items, alongside=append)

    async def create_batch(self, batch_id: str) -> bool:
        """Record a new, empty batch; False (and no change) if it exists already."""
        check_batch_id(batch_id)
        params = (batch_id, self.session.now())
        return await self.session.execute(self._sql["create_batch"], params) == 1

    def appender(self, batch_id: str, expected_size: int | None = None) -> Appender:
        """What appends tasks to the batch (created if missing) inside the
        transaction that stores them: pass it as ``alongside`` to the enqueuer's
        ``enqueue_many``. It returns the position of the first one.

        With ``expected_size``, a compare-and-set: if the batch's size is not that
        (0 for a missing batch) at the moment of the append, nothing is stored and
        :class:`BatchSizeChanged` is raised."""
        check_batch_id(batch_id)
        if expected_size is not None:
            checks.integer("expected_size", expected_size, minimum=0, hint=" (the batch's size)")
        sql = self._sql
        session = self.session

        async def append(tx: StoreTransaction, task_ids: Sequence[str]) -> int:
            count, now = len(task_ids), session.now()
            params: tuple[Any, ...] = (batch_id, count, expected_size)
            query = "reserve_positions_if_size"
            if not expected_size:  # None or 0: the batch may be created (if 0, must be empty)
                query, params = "reserve_positions", (batch_id, now, count, expected_size == 0)
            rows = await tx.fetch(sql[query], params)
            if not rows:
                raise BatchSizeChanged(batch_id, expected_size or 0)
            start = int(rows[0][0])
            if task_ids:
                await tx.execute(sql["insert_members"], (batch_id, start, session.array(task_ids)))
            return start

        return append

    async def get_batch(self, batch_id: str) -> StoredBatch | None:
        """The batch's record, or None if there is no such batch."""
        rows = await self.session.fetch(self._sql["get_batch"], (batch_id,))
        return StoredBatch(*rows[0]) if rows else None

    async def list_batches(self, limit: int | None = None, offset: int = 0) -> list[StoredBatch]:
        """Every batch, newest first; or, with ``limit``, that many after skipping
        ``offset`` (a page, for a dashboard)."""
        rows = await self.session.fetch(self._sql["list_batches"], (limit, offset))
        return [StoredBatch(*row) for row in rows]

    async def batch_task_ids(self, batch_id: str) -> list[str]:
        """The ids of the batch's tasks still stored, in position order."""
        return [task_id for _, task_id in await self.batch_members(batch_id)]

    async def batch_members(self, batch_id: str) -> list[tuple[int, str]]:
        """``(position, task_id)`` of the batch's tasks still stored, in position
        order; positions start at 0, and those of pruned tasks are absent."""
        rows = await self.session.fetch(self._sql["batch_members"], (batch_id,))
        return [(int(row[0]), row[1]) for row in rows]

    async def count_batch_statuses(self, batch_id: str) -> dict[str, int]:
        """Number of the batch's stored tasks per status, in one query."""
        rows = await self.session.fetch(self._sql["count_batch_statuses"], (batch_id,))
        return {row[0]: int(row[1]) for row in rows}

    async def batch_status_counts(self, batch_id: str) -> dict[str, int]:
        """How many of the batch's stored tasks are in each status (every
        :class:`~sitq.TaskStatus` value is a key), in one query."""
        counts = await self.count_batch_statuses(batch_id)
        return {status.value: counts.get(status.value, 0) for status in TaskStatus}

    async def delete_batch(self, batch_id: str) -> bool:
        """Forget the batch (its tasks stay); False if there was no such batch."""
        sql = self._sql

        async def body(tx: StoreTransaction) -> int:
            await tx.execute(sql["delete_members"], (batch_id,))
            return await tx.execute(sql["delete_batch"], (batch_id,))

        return await self.session.transaction(body) == 1
