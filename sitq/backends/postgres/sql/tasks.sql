-- Tasks on the producer's and the operator's side: insert, read, cancel, retry,
-- purge and prune.

-- name: insert_tasks
-- One statement (one round trip, its own transaction) for a whole batch: arrays
-- in NewTask's field order, and one NOTIFY, delivered when it commits.
WITH inserted AS (
    INSERT INTO {s}.sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at,
        available_at, max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key)
    SELECT id, queue, func_name, payload, 'queued', priority, enqueued_at, available_at,
        max_retries, retry_backoff, timeout, unique_key, result_ttl,
        (SELECT key FROM {s}.sitq_limits l WHERE l.key = t.limit_key)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::int[], $6::float8[],
        $7::float8[], $8::int[], $9::float8[], $10::float8[], $11::text[], $12::float8[],
        $13::text[])
        AS t(id, queue, func_name, payload, priority, enqueued_at, available_at, max_retries,
             retry_backoff, timeout, unique_key, result_ttl, limit_key)
)
SELECT pg_notify($14, 'tasks')

-- name: insert_unique_task
-- One task with a unique key; no row comes back while another queued or
-- running task holds the key (then existing_unique finds it).
INSERT INTO {s}.sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at,
    available_at, max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key)
VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12,
    (SELECT key FROM {s}.sitq_limits WHERE key = $13))
ON CONFLICT DO NOTHING
RETURNING id

-- name: existing_unique
SELECT id FROM {s}.sitq_tasks WHERE unique_key = $1 AND status IN ('queued', 'running')

-- name: get_tasks
-- {columns}: the task columns asked for (base.task_columns), filled in first;
-- then {s} as everywhere.
SELECT id, {columns} FROM {s}.sitq_tasks WHERE id = ANY($1::text[])

-- name: lock_task_status
-- Locks the row: a worker's finish or retry cannot slip in between reading
-- the status and acting on it.
SELECT status FROM {s}.sitq_tasks WHERE id = $1 FOR UPDATE

-- name: request_cancel
UPDATE {s}.sitq_tasks SET cancel_requested = true WHERE id = $1 AND status = 'running'
RETURNING id

-- name: cancel_queued
UPDATE {s}.sitq_tasks
SET status = 'cancelled', finished_at = $2::float8, error = 'cancelled before it started',
    expires_at = $2::float8 + COALESCE(result_ttl, $3::float8)
WHERE status = 'queued' AND id = ANY($1::text[])
RETURNING id

-- name: retry
-- {where} selects the tasks to queue again (filled in with str.replace, before
-- {s}); $1 is now. Each row: the id, and whether it has dependency links.
UPDATE {s}.sitq_tasks
SET status = 'queued', attempts = 0, available_at = $1::float8, result = NULL, error = NULL,
    traceback = NULL, started_at = NULL, finished_at = NULL, expires_at = NULL,
    worker_id = NULL, lease_expires_at = NULL, cancel_requested = false
WHERE status IN ('failed', 'cancelled') AND {where}
  AND (unique_key IS NULL OR (
    NOT EXISTS (
      SELECT 1 FROM {s}.sitq_tasks live WHERE live.unique_key = {s}.sitq_tasks.unique_key
        AND live.status IN ('queued', 'running'))
    -- of several finished tasks with one key, only one comes back
    AND id = (
      SELECT min(id) FROM {s}.sitq_tasks done WHERE done.unique_key = {s}.sitq_tasks.unique_key
        AND done.status IN ('failed', 'cancelled'))))
RETURNING id, (parent_mode IS NOT NULL OR has_children)

-- name: count_statuses
-- A claimed task that has not started counts as queued (base.STATUS_SQL).
SELECT CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END AS state, count(*) FROM {s}.sitq_tasks WHERE id = ANY($1::text[])
GROUP BY state

-- name: task_statuses
SELECT id, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END FROM {s}.sitq_tasks WHERE id = ANY($1::text[])

-- name: purge
-- {where}: the statuses, and optionally the queue and age, to delete
-- (filled in with str.replace, before {s}).
DELETE FROM {s}.sitq_tasks WHERE {where}

-- name: prune_tasks
-- Finished tasks past their retention, but a parent whose dependents have not all
-- finished stays (past its time) until they have: a dependent that runs later
-- still receives its result.
DELETE FROM {s}.sitq_tasks WHERE expires_at < $1
  AND NOT (has_children AND EXISTS (
    SELECT 1 FROM {s}.sitq_dependencies d JOIN {s}.sitq_tasks c ON c.id = d.child_id
    WHERE d.parent_id = {s}.sitq_tasks.id AND c.status IN ('queued', 'running')))

-- name: notify
-- A wake-up ($2: a WakeKind) on the backend's channel ($1), sent at commit.
SELECT pg_notify($1, $2)
