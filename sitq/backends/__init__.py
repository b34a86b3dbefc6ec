"""Storage backends, and how a URL or path picks one."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

from sitq.backends.base import Backend
from sitq.display import redact
from sitq.errors import ConfigurationError, DatabaseUnavailable, SitqError, StorageError

DEFAULT_DATABASE = "sitq.db"
_MEMORY_DATABASE = (
    "sitq needs a database file shared with its workers: give a path such as 'tasks.db'"
)


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


def default_database() -> str:
    """``$SITQ_DB`` if set, else ``sitq.db`` in the current directory."""
    return os.environ.get("SITQ_DB") or DEFAULT_DATABASE


def open_backend(target: Backend | str | os.PathLike[str] | None, **options: Any) -> Backend:
    """A backend for ``target``: a Backend (returned as is), a URL, a path, or None.

    ``"tasks.db"`` and ``"sqlite:///tasks.db"`` give an SQLiteBackend;
    ``"postgresql://..."`` the PostgreSQL backend (``pip install sitq[postgres]``).
    ``options`` go to the backend's constructor.
    """
    if isinstance(target, Backend):
        return target
    if target is None:
        target = default_database()
    if not isinstance(target, (str, os.PathLike)):
        raise ConfigurationError(
            f"backend must be a Backend, a database URL or a path, got {type(target).__name__}"
        )
    text = os.fspath(target)
    if text.lower().startswith(("postgresql://", "postgres://")):
        # Imported only here: the embedded default never needs asyncpg.
        from sitq.backends.postgres import PostgresBackend

        try:
            return PostgresBackend(text, **options)
        except ValueError as exc:
            # urllib's messages can quote the URL's network location, password included.
            raise ConfigurationError(
                f"the PostgreSQL URL cannot be read ({redact(str(exc))}): check its form, "
                "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, percent-encoding special "
                "characters in the password"
            ) from None
    if text.startswith("sqlite://"):
        text = text[len("sqlite://") :]
        if text.startswith("/"):
            text = text[1:]  # sqlite:///rel.db is relative; sqlite:////abs.db is absolute
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigurationError(
            f"unknown database URL scheme {scheme!r}: use a path, 'sqlite:///PATH' "
            "or 'postgresql://...'"
        )
    check_database_path(text)
    from sitq.backends.sqlite import SQLiteBackend

    return SQLiteBackend(text, **options)


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
