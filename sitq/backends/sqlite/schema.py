"""The SQLite schema's version, and the named queries of ``sql/*.sql`` (one file
per concern), read once at import into :data:`SQL`; the migrations are the
``vN_MM_*`` queries of ``sql/schema.sql``.
"""

from __future__ import annotations

from sitq.sqlfiles import Queries, load_queries, migrations

#: Every named query of ``sql/*.sql``.
SQL: Queries = load_queries(__package__ or "sitq.backends.sqlite")

SCHEMA_VERSION = 13

#: Each entry upgrades the schema from version (key - 1) to version key.
MIGRATIONS: dict[int, tuple[str, ...]] = migrations(SQL, SCHEMA_VERSION)
