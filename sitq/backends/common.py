"""Logic both SQL backends run alike, written once.

Pure Python over what a query returned (each backend keeps its own SQL and
driver calls, and hands the rows here), the event-loop binding both enforce,
and the translation of either driver's errors into sitq's. (The listing's cursor and window helpers
that predate this module live in ``sitq.backends.base``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence

from sitq.backends.base import Backend, ListingSource, TaskPage, TaskRecord
from sitq.errors import ConfigurationError, DatabaseUnavailable, SitqError, StorageError

_MEMORY_DATABASE = (
    "sitq needs a database file shared with its workers: give a path such as 'tasks.db'"
)


def listing_window_size(
    source: ListingSource, queue: str | None, status: str | None, limit: int, scan_limit: int
) -> int:
    """How many rows a listing scans from its source's index.

    Without filters left to apply (the source already is the filter), the page
    is the window's first ``limit`` rows; otherwise up to ``scan_limit`` rows are
    read and filtered, so a page reads no more than that however rare its rows.
    """
    prefiltered = queue is None and (status is None or source in ("failed", "running"))
    return limit if prefiltered else max(limit, scan_limit)


def listing_page(
    ids: Sequence[str], found: Iterable[TaskRecord], next_cursor: str | None
) -> TaskPage:
    """The page of ``ids`` in listing order, from the records loaded for them.

    A task deleted between the window's scan and the load is left out.
    """
    records = {record.id: record for record in found}
    return TaskPage([records[task_id] for task_id in ids if task_id in records], next_cursor)


class Every:
    """A deadline that comes round every ``interval`` seconds: work the backends
    do at most that often (reclaiming expired leases, re-reading whether any
    limit exists), on the claim path.
    """

    __slots__ = ("_interval", "_next")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    def due(self, now: float) -> bool:
        """True at most once per interval; the next time is set from ``now``."""
        if now < self._next:
            return False
        self._next = now + self._interval
        return True

    def reset(self) -> None:
        """Be due at the next check (what it guards has changed)."""
        self._next = 0.0


def check_database_path(text: str) -> None:
    """Refuse an SQLite path no worker could share (empty, or ``:memory:``)."""
    if not text or text == ":memory:":
        raise ConfigurationError(_MEMORY_DATABASE)


class LoopBinding:
    """The one event loop a backend object serves.

    Its connections, locks and wake-ups belong to the loop that connected it, so
    a second loop (another thread, e.g. a Worker beside a SyncTaskQueue) is
    refused at ``connect()`` with what to do, rather than failing later with
    "bound to a different event loop" on every claim. Once every user has
    closed, or that loop has closed, another loop may take the backend over.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard = threading.Lock()  # connect() may run in two threads at once

    def bind(self, describe: str) -> bool:
        """Bind to the running loop; True if that is a new loop (the caller then
        makes its loop-bound locks and events afresh)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if self._loop is loop:
                return False
            if self._loop is not None and not self._loop.is_closed():
                raise ConfigurationError(
                    f"this backend object ({describe}) is in use by another event loop "
                    "(another thread, or another asyncio.run): one backend object serves "
                    "one event loop. Give each its own backend, e.g. pass the path or URL "
                    "to the SyncTaskQueue and to the Worker instead of one backend object"
                )
            self._loop = loop
            return True

    def release(self) -> None:
        """The last user closed: the next ``connect()`` may come from any loop."""
        with self._guard:
            self._loop = None


#: PostgreSQL error classes that mean "not reachable now" rather than "refused":
#: connection exceptions (08...), shutdown and start-up (57P01-03), too many clients.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def translate_error(exc: BaseException, backend: Backend) -> SitqError | None:
    """The SitqError a caller should see for a raw database error, or None if
    ``exc`` is not a database error (it is then raised as it is).

    Known without importing any driver: sqlite3 errors, errors carrying a
    PostgreSQL ``sqlstate``, lost connections, and the asyncpg driver's own.
    """
    if isinstance(exc, SitqError):
        return exc
    where = backend.describe()
    sqlite3 = sys.modules.get("sqlite3")  # not imported: exc cannot be one of its errors
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL" or "disk is full" in str(exc):
            return StorageError(
                f"cannot write to {where}: the disk is full ({exc}); nothing of this call "
                "was stored: free some space and try again"
            )
        return StorageError(f"{where} failed: {type(exc).__name__}: {exc}")
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, (ConnectionError, TimeoutError)) or (
        isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    ):
        return DatabaseUnavailable(
            f"{where} is unreachable ({type(exc).__name__}: {exc}); it may be restarting: "
            "try again once it is back"
        )
    if isinstance(sqlstate, str) or type(exc).__module__.startswith("asyncpg"):
        return StorageError(f"{where} refused the operation: {type(exc).__name__}: {exc}")
    return None


@contextlib.contextmanager
def translated(backend: Backend) -> Iterator[None]:
    """Raise the SitqError of a raw database error raised in the block (the original
    as its ``__cause__``); a SitqError or any other error goes through unchanged."""
    try:
        yield
    except SitqError:
        raise
    except Exception as exc:
        error = translate_error(exc, backend)
        if error is None:
            raise
        raise error from exc
