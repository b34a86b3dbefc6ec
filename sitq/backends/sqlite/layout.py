"""Which form a SQLite file's task ids take, and the rebuild between the two.

Files made since schema version 13 keep each task under its integer row id
(``id INTEGER PRIMARY KEY``; the public id is its decimal string), with the
columns that name a task (a dependency's child and parent, a batch member, a
cancelled task's ``cancelled_by``) integers too, so that every join compares
integers and finds its index. Files made by an older sitq keep text ids (a
process of that sitq may still write its text ids to them). The same SQL serves
both forms (SQLite converts a decimal string parameter to the integer an
integer column holds).

The tables are rebuilt only while they hold no task, dependency or batch member:
when a new file is made, and when ``sitq migrate`` copies text ids into a new
file (``integer=False``).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref

from sitq.backends.common import Transaction
from sitq.backends.sqlite.schema import SQL

logger = logging.getLogger("sitq.backends.sqlite")

#: Per table: each column declaration as text ids have it, and as integer ids do.
_COLUMNS = {
    "sitq_tasks": (
        ("id TEXT PRIMARY KEY", "id INTEGER PRIMARY KEY"),
        ("cancelled_by TEXT", "cancelled_by INTEGER"),
    ),
    "sitq_dependencies": (
        ("child_id TEXT NOT NULL", "child_id INTEGER NOT NULL"),
        ("parent_id TEXT NOT NULL", "parent_id INTEGER NOT NULL"),
    ),
    "sitq_batch_tasks": (("task_id TEXT NOT NULL", "task_id INTEGER NOT NULL"),),
}


async def has_integer_ids(tx: Transaction) -> bool:
    """The file keeps tasks under integer row ids."""
    rows = await tx.fetch(SQL.task_id_column_type)
    return bool(rows) and str(rows[0][0]).upper() == "INTEGER"


async def rebuild(tx: Transaction, *, integer: bool) -> bool:
    """Give the tables integer ids (or text ids) if they hold none yet; True if
    they now have that form. Inside ``tx``, with the write lock held."""
    if await has_integer_ids(tx) == integer:
        return True
    if not (await tx.fetch(SQL.tasks_tables_empty))[0][0]:
        return False
    rows = await tx.fetch(SQL.tasks_tables)
    tables = [(name, sql) for kind, name, _table, sql in rows if kind == "table"]
    rebuilt = []
    for name, sql in tables:
        for text, whole in _COLUMNS[name]:
            old, new = (text, whole) if integer else (whole, text)
            if sql.count(old) != 1:  # not the tables sitq made: leave them as they are
                logger.warning("%s: not rebuilt, its schema lacks %r: %s", name, old, sql)
                return False
            sql = sql.replace(old, new)
        rebuilt.append((name, sql))
    for name, _sql in reversed(tables):
        await tx.execute(f"DROP TABLE {name}")  # its indexes and triggers go with it
    for _name, sql in rebuilt:
        await tx.execute(sql)
    for kind, _name, _table, sql in rows:
        if kind != "table":
            await tx.execute(sql)
    return True


#: Ids a producer reserves at once: one short write per this many tasks.
ID_BLOCK = 1024


def id_range(start: int, count: int) -> list[str]:
    """``count`` consecutive ids from ``start``, as the public ids they are."""
    return [str(n) for n in range(start, start + count)]


#: The largest row id SQLite can store, as text.
_MAX_ROW_ID = str(2**63 - 1)


def is_row_id(task_id: str) -> bool:
    """True if ``task_id`` is a row id as sitq writes it: plain ASCII decimal
    digits, no leading zero, sign or space. SQLite converts ``'0123'`` or
    ``' 123'`` to 123 when it compares them with an integer column; such an id
    must not reach a task it does not name."""
    return (
        task_id.isascii()
        and task_id.isdigit()
        and task_id[0] != "0"
        and (len(task_id) < 19 or (len(task_id) == 19 and task_id <= _MAX_ROW_ID))
    )


class IdBlock:
    """The ids a backend instance has reserved and not handed out yet.

    Thread-safe (a SyncTaskQueue enqueues from any thread). A process forked
    from one holding ids starts with none, so the two never hand out the same."""

    def __init__(self) -> None:
        self._next = self._end = 0
        self._lock = threading.Lock()
        #: Held by the one thread reserving the next block, so that threads that
        #: run short together share it (see SQLiteBackend.reserve_task_ids_blocking).
        self.reserving = threading.Lock()
        _blocks.add(self)

    def take(self, count: int) -> list[str] | None:
        """``count`` ids in order, or None if fewer are left."""
        with self._lock:
            start = self._next
            if self._end - start < count:
                return None
            self._next = start + count
        return id_range(start, count)

    def refill(self, start: int, size: int, count: int) -> list[str]:
        """Keep the block of ``size`` ids from ``start`` just reserved, less the
        ``count`` first, which are returned (what was left before is dropped)."""
        with self._lock:
            self._next, self._end = start + count, start + size
        return id_range(start, count)

    def drop(self) -> None:
        """Forget the ids held."""
        with self._lock:
            self._next = self._end = 0

    def forget_after_fork(self) -> None:
        """Forget the ids held, in a forked child (where a lock held at the fork
        stays held, so it is made afresh)."""
        self._lock = threading.Lock()
        self.reserving = threading.Lock()
        self._next = self._end = 0


_blocks: weakref.WeakSet[IdBlock] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for block in list(_blocks):
        block.forget_after_fork()


os.register_at_fork(after_in_child=_forget_after_fork)
