-- Task listings for dashboards. A listing scans a bounded window of rows in
-- keyset order from an index, then loads the matching tasks: no index is added
-- for it (each would slow the enqueue and drain paths), and no page reads more
-- than the window. A claimed task that has not started reads as queued
-- (base.STATUS_SQL).

-- name: list_window_tasks
-- Every task, newest id first (the primary key's index).
SELECT CAST(id AS TEXT), CAST(id AS TEXT), queue, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END FROM sitq_tasks WHERE id < ?2 ORDER BY id DESC LIMIT ?1

-- name: list_window_failed
-- Failures, newest first, from their partial index; keyset (finished_at, id).
SELECT CAST(id AS TEXT), finished_at, CAST(id AS TEXT), queue, status FROM sitq_tasks
WHERE status = 'failed' AND finished_at >= 0 AND finished_at <= ?2
    AND (finished_at < ?2 OR id < ?3)
ORDER BY finished_at DESC, id DESC LIMIT ?1

-- name: list_window_running
-- Running tasks from their partial index (few rows); the comparison inside
-- coalesce() and '+id' keep SQLite from walking the primary key instead (the
-- comparison still converts ?2 to an integer id where ids are integers).
SELECT CAST(id AS TEXT), CAST(id AS TEXT), queue, status FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at >= 0 AND started_at IS NOT NULL
    AND coalesce(id < ?2, 0)
ORDER BY +id DESC LIMIT ?1

-- name: list_window_batch
-- A batch's stored members in batch order.
SELECT b.position, CAST(t.id AS TEXT), t.queue, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END
FROM sitq_batch_tasks b JOIN sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = ?2 AND b.position > ?3
ORDER BY b.position LIMIT ?1

-- name: list_tasks_by_id
-- The listed columns: no result or traceback, the error cut to 1,000 characters.
SELECT CAST(id AS TEXT), queue, func_name, status, priority, attempts, max_retries, enqueued_at, available_at, started_at, finished_at, worker_id, NULL, substr(error, 1, 1000), NULL, progress_done, progress_total, progress_message, progress_at FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?))
