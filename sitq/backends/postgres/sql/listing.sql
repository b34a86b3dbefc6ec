-- Task listings for dashboards. A listing scans a bounded window of rows in
-- keyset order from an index, then loads the matching tasks: no index is added
-- for it (each would slow the enqueue and drain paths), and no page reads more
-- than the window. The first page of an id-ordered window has no bound: no
-- string sorts after every id in every collation. A claimed task that has not
-- started reads as queued (base.STATUS_SQL).

-- name: list_window_tasks
-- Every task, newest id first (the primary key's index). {after} is empty on
-- the first page, else "AND id < $2".
SELECT id, id, queue, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END FROM {s}.sitq_tasks WHERE true {after}
ORDER BY id DESC LIMIT $1

-- name: list_window_failed
-- Failures, newest first, from their partial index; keyset (finished_at, id).
SELECT id, finished_at, id, queue, status FROM {s}.sitq_tasks
WHERE status = 'failed' AND finished_at <= $2::float8
    AND (finished_at < $2::float8 OR id < $3)
ORDER BY finished_at DESC, id DESC LIMIT $1

-- name: list_window_running
-- Running tasks from their partial index (few rows); {after} as in
-- list_window_tasks.
SELECT id, id, queue, status FROM {s}.sitq_tasks
WHERE status = 'running' AND lease_expires_at IS NOT NULL AND started_at IS NOT NULL {after}
ORDER BY id DESC LIMIT $1

-- name: list_window_batch
-- A batch's stored members in batch order.
SELECT b.position, t.id, t.queue, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END
FROM {s}.sitq_batch_tasks b JOIN {s}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $2 AND b.position > $3
ORDER BY b.position LIMIT $1

-- name: list_tasks_by_id
-- The listed columns: no result or traceback, the error cut to 1,000 characters.
SELECT id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, available_at, started_at, finished_at, worker_id, NULL::bytea, left(error, 1000), NULL, progress_done, progress_total, progress_message, progress_at FROM {s}.sitq_tasks WHERE id = ANY($1::text[])
