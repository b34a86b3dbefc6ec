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
from sitq.backends.queries import Queries, load_queries, migrations

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

#: The batch insert, by its old name, for the named batches' enqueue_in_batch
#: until that moves to the batch layer's store.
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
# -- named batches ----------------------------------------------------------

CREATE_BATCH = """
INSERT INTO {s}.sitq_batches (id, created_at, size) VALUES ($1, $2, 0)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# Reserve positions for $3 new members (creating the batch if missing); the
# row lock serializes producers appending to one batch. Returns the first one.
RESERVE_BATCH_POSITIONS = """
INSERT INTO {s}.sitq_batches AS b (id, created_at, size) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET size = b.size + EXCLUDED.size
RETURNING b.size - $3
"""

# RESERVE_BATCH_POSITIONS as a compare-and-set: no row (so nothing reserved)
# unless the batch has $4 members (a batch that does not exist has 0).
RESERVE_BATCH_POSITIONS_IF_EMPTY = """
INSERT INTO {s}.sitq_batches AS b (id, created_at, size) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET size = b.size + EXCLUDED.size WHERE b.size = 0
RETURNING b.size - $3
"""
RESERVE_BATCH_POSITIONS_IF_SIZE = """
UPDATE {s}.sitq_batches SET size = size + $2 WHERE id = $1 AND size = $3
RETURNING size - $2
"""

INSERT_BATCH_TASKS = """
INSERT INTO {s}.sitq_batch_tasks (batch_id, position, task_id)
SELECT $1, $2 + t.ord - 1, t.id FROM unnest($3::text[]) WITH ORDINALITY AS t(id, ord)
"""

GET_BATCH = "SELECT id, created_at, size FROM {s}.sitq_batches WHERE id = $1"

LIST_BATCHES = "SELECT id, created_at, size FROM {s}.sitq_batches ORDER BY created_at DESC, id"
# A page of them (LIMIT NULL: all); a top-N sort keeps only the page.
LIST_BATCHES_PAGE = LIST_BATCHES + " LIMIT $1::bigint OFFSET $2::bigint"

BATCH_TASK_IDS = "SELECT task_id FROM {s}.sitq_batch_tasks WHERE batch_id = $1 ORDER BY position"

BATCH_MEMBERS = """
SELECT position, task_id FROM {s}.sitq_batch_tasks WHERE batch_id = $1 ORDER BY position
"""

COUNT_BATCH_STATUSES = f"""
SELECT {STATUS_SQL} AS state, count(*)
FROM {{s}}.sitq_batch_tasks b JOIN {{s}}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $1 GROUP BY state
"""

DELETE_BATCH = "DELETE FROM {s}.sitq_batches WHERE id = $1"

# -- listings for dashboards -------------------------------------------------

# A batch's stored members in batch order.
LIST_WINDOW_BATCH = f"""
SELECT b.position, t.id, t.queue, {STATUS_SQL}
FROM {{s}}.sitq_batch_tasks b JOIN {{s}}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $2 AND b.position > $3
ORDER BY b.position LIMIT $1
"""

# -- workflow runs (sitq.workflow) ---------------------------------------------
#
# Each item change is one single-row UPDATE by primary key: a workflow of
# thousands of items pays one cheap commit per change.

WORKFLOW_RUN_COLUMNS = (
    "id, source, name, text, params, params_preview, status, error, host, pid, "
    "created_at, updated_at, finished_at"
)

CREATE_WORKFLOW_RUN = """
INSERT INTO {s}.sitq_workflow_runs (id, source, name, text, params, params_preview, status,
    host, pid, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $9)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

GET_WORKFLOW_RUN = f"SELECT {WORKFLOW_RUN_COLUMNS} FROM {{s}}.sitq_workflow_runs WHERE id = $1"

LIST_WORKFLOW_RUNS = f"""
SELECT {WORKFLOW_RUN_COLUMNS} FROM {{s}}.sitq_workflow_runs
ORDER BY created_at DESC, id DESC LIMIT $1
"""

# A run still 'running' has no finished_at; a new owner (host, pid) is kept
# unless given.
UPDATE_WORKFLOW_RUN = """
UPDATE {s}.sitq_workflow_runs
SET status = $2, error = $3, host = COALESCE($4, host), pid = COALESCE($5, pid),
    updated_at = $6::float8,
    finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE $6::float8 END
WHERE id = $1
"""

BEGIN_WORKFLOW_STEP = """
INSERT INTO {s}.sitq_workflow_steps (run_id, name, position, status, total, has_items, items,
    started_at)
VALUES ($1, $2, $3, 'running', $4, $5, $6, $7)
ON CONFLICT (run_id, name) DO NOTHING
RETURNING name
"""

# The items' previews as an array (NULL: none); the index is 0-based.
INSERT_WORKFLOW_ITEMS = """
INSERT INTO {s}.sitq_workflow_items (run_id, step, idx, item_preview, status)
SELECT $1, $2, u.i - 1, u.preview, 'pending'
FROM unnest($3::text[]) WITH ORDINALITY AS u(preview, i)
"""

UPDATE_WORKFLOW_STEP = """
UPDATE {s}.sitq_workflow_steps
SET status = $3, result = $4, result_preview = $5, error = $6,
    finished_at = CASE WHEN $3 = 'running' THEN NULL ELSE $7::float8 END
WHERE run_id = $1 AND name = $2
"""

WORKFLOW_STEP_COLUMNS = (
    "name, position, status, total, has_items, result_preview, error, started_at, finished_at"
)

LIST_WORKFLOW_STEPS = f"""
SELECT {WORKFLOW_STEP_COLUMNS} FROM {{s}}.sitq_workflow_steps WHERE run_id = $1
ORDER BY position
"""

GET_WORKFLOW_STEP = f"""
SELECT {WORKFLOW_STEP_COLUMNS}, items, result FROM {{s}}.sitq_workflow_steps
WHERE run_id = $1 AND name = $2
"""

_WORKFLOW_ITEMS_SHAPE = """
SELECT idx, item_preview, status, attempts, result_preview, error, traceback, task_id, ran_on,
    started_at, finished_at, @result
FROM {s}.sitq_workflow_items WHERE run_id = $1 AND step = $2 ORDER BY idx
"""

# Results are loaded only when asked for.
LIST_WORKFLOW_ITEMS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "NULL::bytea")
LIST_WORKFLOW_ITEMS_WITH_RESULTS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "result")

WORKFLOW_ITEM_STARTED = """
UPDATE {s}.sitq_workflow_items
SET status = 'running', ran_on = $4, attempts = COALESCE($6, attempts), error = NULL,
    traceback = NULL, started_at = $5, finished_at = NULL
WHERE run_id = $1 AND step = $2 AND idx = $3
"""

WORKFLOW_ITEM_ATTEMPT = """
UPDATE {s}.sitq_workflow_items SET attempts = $4 WHERE run_id = $1 AND step = $2 AND idx = $3
"""

WORKFLOW_ITEM_SUBMITTED = """
UPDATE {s}.sitq_workflow_items SET task_id = $4 WHERE run_id = $1 AND step = $2 AND idx = $3
"""

WORKFLOW_ITEM_FINISHED = """
UPDATE {s}.sitq_workflow_items
SET status = $4, attempts = $5, result = $6, result_preview = $7, error = $8, traceback = $9,
    finished_at = $10
WHERE run_id = $1 AND step = $2 AND idx = $3
"""
