"""Storage backends, and how a URL or path picks one."""

from __future__ import annotations

import os
from typing import Any

from sitq.backends.base import Backend
from sitq.backends.common import check_database_path
from sitq.display import redact
from sitq.errors import ConfigurationError

DEFAULT_DATABASE = "sitq.db"


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

        # sitq's tables live in a schema of their own there: nothing to allow.
        options.pop("alongside", None)

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
