"""The PostgreSQL schema, its versions, and the named queries of the backend.

The queries live in ``sql/*.sql`` (one file per concern), read once at import
into :data:`SQL` (``SQL.claim_ready``); the migrations are the ``vN_MM_*``
queries of ``sql/schema.sql``. ``{s}`` is the schema name (quoted identifier),
so several apps can share one server. Times are unix seconds (``double
precision``), as in SQLite. The string constants below are the queries of the
status summary, named batches and workflow runs, still to move.
"""

from __future__ import annotations

from sitq.backends.base import CLAIMED_SQL, STATUS_SQL
from sitq.sqlfiles import Queries, load_queries, migrations

#: Every named query of ``sql/*.sql``.
SQL: Queries = load_queries(__package__ or "sitq.backends.postgres")

SCHEMA_VERSION = 7

#: Each entry upgrades the schema from version (key - 1) to version key.
MIGRATIONS: dict[int, tuple[str, ...]] = migrations(SQL, SCHEMA_VERSION)

TASK_COLUMNS = (
    "id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, result, error, traceback"
)

# One statement (one round trip, its own transaction) for a whole batch: arrays

#: The batch insert, by its old name (the store session's insert_tasks).
INSERT_TASKS = SQL.insert_tasks

# -- status summary ----------------------------------------------------------

# Claimed tasks that have not started count as queued.
COUNTS = f"""
SELECT queue, {STATUS_SQL} AS state, count(*) FROM {{s}}.sitq_tasks GROUP BY queue, state
"""

# The same scan, also counting the tasks finished since $1 (no index on
# finished_at for every row: drain would pay for it on each finish).
COUNTS_AND_FINISHED = f"""
SELECT queue, {STATUS_SQL} AS state, count(*),
    count(*) FILTER (WHERE finished_at >= $1::float8)
FROM {{s}}.sitq_tasks GROUP BY queue, state
"""

# Queued tasks that ran before, per queue: both halves of the queued tasks (with
# and without a limit key) are read from their partial indexes, not the table.
RETRYING_COUNTS = """
SELECT queue, COUNT(*) FROM (
    SELECT queue, attempts FROM {s}.sitq_tasks WHERE status = 'queued' AND limit_key IS NULL
    UNION ALL
    SELECT queue, attempts FROM {s}.sitq_tasks WHERE status = 'queued' AND limit_key IS NOT NULL
) queued
WHERE attempts > 0
GROUP BY queue
"""

RUNNING_TASKS = f"""
SELECT {TASK_COLUMNS} FROM {{s}}.sitq_tasks
WHERE status = 'running' AND started_at IS NOT NULL
ORDER BY started_at
"""

CLAIMED_COUNTS = f"""
SELECT queue, worker_id, count(*) FROM {{s}}.sitq_tasks WHERE {CLAIMED_SQL}
GROUP BY queue, worker_id
"""

RECENT_FAILURES = f"""
SELECT {TASK_COLUMNS} FROM {{s}}.sitq_tasks
WHERE status = 'failed'
ORDER BY finished_at DESC
LIMIT $1
"""

OLDEST_WAITING = """
SELECT queue, min(available_at), count(*) FROM (
    SELECT queue, available_at FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND available_at <= $1
    UNION ALL
    SELECT queue, available_at FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NOT NULL AND available_at <= $1
) ready
GROUP BY queue
"""
# Named batches' queries are in sitq/batch/sql/ (this backend's migrations,
# sql/schema.sql, create their tables).

# -- listings for dashboards -------------------------------------------------

# A batch's stored members in batch order.
LIST_WINDOW_BATCH = f"""
SELECT b.position, t.id, t.queue, {STATUS_SQL}
FROM {{s}}.sitq_batch_tasks b JOIN {{s}}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $2 AND b.position > $3
ORDER BY b.position LIMIT $1
"""

# Workflow runs' queries are in sitq/workflow/sql/ (this backend's migrations,
# sql/schema.sql, create their tables).
