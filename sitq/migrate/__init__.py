"""``sitq migrate SRC DST``: move everything a sitq database holds to another one
(SQLite to PostgreSQL, back, or SQLite to SQLite), through the public API.

See :func:`sitq.migrate.migration.migrate`; the command is ``sitq.cli_migrate``.
"""

from __future__ import annotations

from sitq.migrate.migration import (
    TABLES,
    MigrationError,
    MigrationReport,
    migrate,
)

__all__ = ["TABLES", "MigrationError", "MigrationReport", "migrate"]
