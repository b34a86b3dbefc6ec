-- Tasks on the producer's and the operator's side: insert, read, cancel,
-- retry, purge and prune.

-- name: insert_task
-- Column order is NewTask's field order, so a NewTask binds as the row.
INSERT INTO sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at,
    available_at, max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key)
VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, (SELECT key FROM sitq_limits WHERE key = ?))

-- name: reserve_task_ids
-- A block of ?1 ids for one producer: the first of them (see schema version 13).
UPDATE sitq_meta SET value = CAST(CAST(value AS INTEGER) + ?1 AS TEXT)
WHERE key = 'next_task_id'
RETURNING CAST(value AS INTEGER) - ?1

-- name: insert_unique_task
-- A task with a unique key: nothing is inserted while another queued or running
-- task holds the key (the unique index), and existing_unique finds that one.
INSERT INTO sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at,
    available_at, max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key)
VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, (SELECT key FROM sitq_limits WHERE key = ?)) ON CONFLICT DO NOTHING
RETURNING CAST(id AS TEXT)

-- name: existing_unique
SELECT CAST(id AS TEXT) FROM sitq_tasks WHERE unique_key = ? AND status IN ('queued', 'running')

-- name: get_tasks
-- {columns}: the task columns asked for (SQLBackend.get_tasks).
SELECT CAST(id AS TEXT), {columns} FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?))

-- name: lock_task_status
-- The stored status (a claimed task's is 'running'), read inside the write lock.
SELECT status FROM sitq_tasks WHERE id = ?

-- name: request_cancel
UPDATE sitq_tasks SET cancel_requested = 1 WHERE id = ? AND status = 'running'

-- name: cancel_queued
UPDATE sitq_tasks
SET status = 'cancelled', finished_at = ?2, error = 'cancelled before it started',
    expires_at = ?2 + COALESCE(result_ttl, ?3)
WHERE status = 'queued' AND id IN (SELECT value FROM json_each(?1))
RETURNING CAST(id AS TEXT)

-- name: retry
-- {where} selects the tasks to queue again (ids, a queue, or every failure);
-- ?1 is now. Each row: the id, and whether it is linked to others by dependencies.
UPDATE sitq_tasks
SET status = 'queued', attempts = 0, available_at = ?1, result = NULL, error = NULL,
    traceback = NULL, started_at = NULL, finished_at = NULL, expires_at = NULL,
    worker_id = NULL, lease_expires_at = NULL, cancel_requested = 0
WHERE status IN ('failed', 'cancelled') AND {where}
  AND (unique_key IS NULL OR (
    NOT EXISTS (
      SELECT 1 FROM sitq_tasks live WHERE live.unique_key = sitq_tasks.unique_key
        AND live.status IN ('queued', 'running'))
    -- of several finished tasks with one key, only one comes back
    AND id = (
      SELECT min(id) FROM sitq_tasks done WHERE done.unique_key = sitq_tasks.unique_key
        AND done.status IN ('failed', 'cancelled'))))
RETURNING CAST(id AS TEXT), (parent_mode IS NOT NULL OR has_children = 1)

-- name: count_statuses
-- Any number of ids in one query: a JSON array parameter. A claimed task that
-- has not started counts as queued (base.STATUS_SQL).
SELECT CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END AS state, COUNT(*) FROM sitq_tasks
WHERE id IN (SELECT value FROM json_each(?))
GROUP BY state

-- name: task_statuses
SELECT CAST(id AS TEXT), CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?))

-- name: purge
-- {where}: the statuses, and optionally the queue and age, to delete.
DELETE FROM sitq_tasks WHERE {where}

-- name: prune_tasks
-- Finished tasks past their retention, but a parent whose dependents have not all
-- finished stays (past its time) until they have: a dependent that runs later
-- still receives its result.
DELETE FROM sitq_tasks WHERE expires_at < ?
  AND NOT (has_children = 1 AND EXISTS (
    SELECT 1 FROM sitq_dependencies d JOIN sitq_tasks c ON c.id = d.child_id
    WHERE d.parent_id = sitq_tasks.id AND c.status IN ('queued', 'running')))
