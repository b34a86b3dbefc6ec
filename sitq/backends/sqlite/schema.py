"""The SQLite schema, its versions, and the named queries the backend runs.

The queries live in ``sql/*.sql`` (one file per concern), read once at import
into :data:`SQL` (``SQL.claim_ready``); the migrations are the ``vN_MM_*``
queries of ``sql/schema.sql``. The string constants below are the queries of
the status summary, named batches and workflow runs, still to move.
"""

from __future__ import annotations

from sitq.backends.base import CLAIMED_SQL, STATUS_SQL
from sitq.backends.queries import Queries, load_queries, migrations

#: Every named query of ``sql/*.sql``.
SQL: Queries = load_queries(__package__ or "sitq.backends.sqlite")

SCHEMA_VERSION = 7

#: Each entry upgrades the schema from version (key - 1) to version key.
MIGRATIONS: dict[int, tuple[str, ...]] = migrations(SQL, SCHEMA_VERSION)

TASK_COLUMNS = (
    "id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, result, error, traceback"
)

#: The task insert, by its old name, for the named batches' enqueue_in_batch
#: (and tests) until that moves to the batch layer's store.
INSERT_TASK = SQL.insert_task

# -- status summary ----------------------------------------------------------

# Claimed tasks that have not started count as queued.
COUNTS = f"""
SELECT queue, {STATUS_SQL} AS state, COUNT(*) FROM sitq_tasks GROUP BY queue, state
"""

# The same scan, also counting the tasks finished since a time (no index on
# finished_at for every row: drain would pay for it on each finish).
COUNTS_AND_FINISHED = f"""
SELECT queue, {STATUS_SQL} AS state, COUNT(*), COUNT(CASE WHEN finished_at >= ? THEN 1 END)
FROM sitq_tasks GROUP BY queue, state
"""

# Queued tasks that ran before, per queue: both halves of the queued tasks (with
# and without a limit key) are read from their partial indexes, not the table.
RETRYING_COUNTS = """
SELECT queue, COUNT(*) FROM (
    SELECT queue, attempts FROM sitq_tasks WHERE status = 'queued' AND limit_key IS NULL
    UNION ALL
    SELECT queue, attempts FROM sitq_tasks WHERE status = 'queued' AND limit_key IS NOT NULL
) queued
WHERE attempts > 0
GROUP BY queue
"""

# The range condition on lease_expires_at lets SQLite read running tasks from
# their partial index instead of scanning the table.
RUNNING_TASKS = f"""
SELECT {TASK_COLUMNS} FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at >= 0 AND started_at IS NOT NULL
ORDER BY started_at
"""

CLAIMED_COUNTS = f"""
SELECT queue, worker_id, COUNT(*) FROM sitq_tasks
WHERE {CLAIMED_SQL} AND lease_expires_at >= 0
GROUP BY queue, worker_id
"""

RECENT_FAILURES = f"""
SELECT {TASK_COLUMNS} FROM sitq_tasks
WHERE status = 'failed' AND finished_at >= 0
ORDER BY finished_at DESC
LIMIT ?
"""

# Two halves, one per index (ready tasks without and with a limit key).
OLDEST_WAITING = """
SELECT queue, MIN(available_at), COUNT(*) FROM (
    SELECT queue, available_at FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND available_at <= :now
    UNION ALL
    SELECT queue, available_at FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NOT NULL AND available_at <= :now
)
GROUP BY queue
"""

# -- named batches ----------------------------------------------------------

CREATE_BATCH = """
INSERT INTO sitq_batches (id, created_at, size) VALUES (?, ?, 0)
ON CONFLICT (id) DO NOTHING
"""

# Reserve positions for :count new members (creating the batch if missing);
# returns the first reserved position. Run inside the enqueue's transaction.
RESERVE_BATCH_POSITIONS = """
INSERT INTO sitq_batches (id, created_at, size) VALUES (:id, :now, :count)
ON CONFLICT (id) DO UPDATE SET size = size + excluded.size
RETURNING size - :count
"""

# RESERVE_BATCH_POSITIONS as a compare-and-set: no row (so nothing reserved)
# unless the batch has :expected members (a batch that does not exist has 0).
RESERVE_BATCH_POSITIONS_IF_EMPTY = """
INSERT INTO sitq_batches (id, created_at, size) VALUES (:id, :now, :count)
ON CONFLICT (id) DO UPDATE SET size = size + excluded.size WHERE size = 0
RETURNING size - :count
"""
RESERVE_BATCH_POSITIONS_IF_SIZE = """
UPDATE sitq_batches SET size = size + :count WHERE id = :id AND size = :expected
RETURNING size - :count
"""

# The members as a JSON array of ids; json_each's key is the 0-based index.
INSERT_BATCH_TASKS = """
INSERT INTO sitq_batch_tasks (batch_id, position, task_id)
SELECT ?, ? + key, value FROM json_each(?)
"""

GET_BATCH = "SELECT id, created_at, size FROM sitq_batches WHERE id = ?"

LIST_BATCHES = "SELECT id, created_at, size FROM sitq_batches ORDER BY created_at DESC, id"
# A page of them (LIMIT -1: all); the sort keeps only the page, not every row.
LIST_BATCHES_PAGE = LIST_BATCHES + " LIMIT ? OFFSET ?"

BATCH_TASK_IDS = "SELECT task_id FROM sitq_batch_tasks WHERE batch_id = ? ORDER BY position"

BATCH_MEMBERS = """
SELECT position, task_id FROM sitq_batch_tasks WHERE batch_id = ? ORDER BY position
"""

COUNT_BATCH_STATUSES = f"""
SELECT {STATUS_SQL} AS state, COUNT(*)
FROM sitq_batch_tasks b JOIN sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = ? GROUP BY state
"""

DELETE_BATCH_TASKS = "DELETE FROM sitq_batch_tasks WHERE batch_id = ?"
DELETE_BATCH = "DELETE FROM sitq_batches WHERE id = ?"

# -- listings for dashboards -------------------------------------------------

# A batch's stored members in batch order.
LIST_WINDOW_BATCH = f"""
SELECT b.position, t.id, t.queue, {STATUS_SQL}
FROM sitq_batch_tasks b JOIN sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = ? AND b.position > ?
ORDER BY b.position LIMIT ?
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
INSERT INTO sitq_workflow_runs (id, source, name, text, params, params_preview, status,
    host, pid, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""

GET_WORKFLOW_RUN = f"SELECT {WORKFLOW_RUN_COLUMNS} FROM sitq_workflow_runs WHERE id = ?"

LIST_WORKFLOW_RUNS = f"""
SELECT {WORKFLOW_RUN_COLUMNS} FROM sitq_workflow_runs ORDER BY created_at DESC, id DESC LIMIT ?
"""

# A run still 'running' has no finished_at; a new owner (host, pid) is kept
# unless given.
UPDATE_WORKFLOW_RUN = """
UPDATE sitq_workflow_runs
SET status = :status, error = :error, host = COALESCE(:host, host), pid = COALESCE(:pid, pid),
    updated_at = :now, finished_at = CASE WHEN :status = 'running' THEN NULL ELSE :now END
WHERE id = :id
"""

BEGIN_WORKFLOW_STEP = """
INSERT INTO sitq_workflow_steps (run_id, name, position, status, total, has_items, items,
    started_at)
VALUES (?, ?, ?, 'running', ?, ?, ?, ?)
ON CONFLICT (run_id, name) DO NOTHING
"""

# The items as a JSON array of previews (null: none); json_each's key is the index.
INSERT_WORKFLOW_ITEMS = """
INSERT INTO sitq_workflow_items (run_id, step, idx, item_preview, status)
SELECT ?, ?, key, value, 'pending' FROM json_each(?)
"""

UPDATE_WORKFLOW_STEP = """
UPDATE sitq_workflow_steps
SET status = :status, result = :result, result_preview = :preview, error = :error,
    finished_at = CASE WHEN :status = 'running' THEN NULL ELSE :now END
WHERE run_id = :run_id AND name = :name
"""

WORKFLOW_STEP_COLUMNS = (
    "name, position, status, total, has_items, result_preview, error, started_at, finished_at"
)

LIST_WORKFLOW_STEPS = f"""
SELECT {WORKFLOW_STEP_COLUMNS} FROM sitq_workflow_steps WHERE run_id = ? ORDER BY position
"""

GET_WORKFLOW_STEP = f"""
SELECT {WORKFLOW_STEP_COLUMNS}, items, result FROM sitq_workflow_steps
WHERE run_id = ? AND name = ?
"""

_WORKFLOW_ITEMS_SHAPE = """
SELECT idx, item_preview, status, attempts, result_preview, error, traceback, task_id, ran_on,
    started_at, finished_at, @result
FROM sitq_workflow_items WHERE run_id = ? AND step = ? ORDER BY idx
"""

# Results are loaded only when asked for.
LIST_WORKFLOW_ITEMS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "NULL")
LIST_WORKFLOW_ITEMS_WITH_RESULTS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "result")

WORKFLOW_ITEM_STARTED = """
UPDATE sitq_workflow_items
SET status = 'running', ran_on = ?, attempts = COALESCE(?, attempts), error = NULL,
    traceback = NULL, started_at = ?, finished_at = NULL
WHERE run_id = ? AND step = ? AND idx = ?
"""

WORKFLOW_ITEM_ATTEMPT = """
UPDATE sitq_workflow_items SET attempts = ? WHERE run_id = ? AND step = ? AND idx = ?
"""

WORKFLOW_ITEM_SUBMITTED = """
UPDATE sitq_workflow_items SET task_id = ? WHERE run_id = ? AND step = ? AND idx = ?
"""

WORKFLOW_ITEM_FINISHED = """
UPDATE sitq_workflow_items
SET status = ?, attempts = ?, result = ?, result_preview = ?, error = ?, traceback = ?,
    finished_at = ?
WHERE run_id = ? AND step = ? AND idx = ?
"""
