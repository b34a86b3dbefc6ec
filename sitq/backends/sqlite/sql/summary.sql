-- The status summary: counts, and what waits and runs now. A claimed task
-- that has not started counts as queued (base.STATUS_SQL).

-- name: counts
-- Tasks per (queue, status), and of those the ones finished since ?1, in one
-- scan (no index on finished_at for every row: drain would pay for it on each
-- finish).
SELECT queue, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END AS state, COUNT(*),
    COUNT(CASE WHEN finished_at >= ?1 THEN 1 END)
FROM sitq_tasks GROUP BY queue, state

-- name: retrying_counts
-- Queued tasks that ran before, per queue: both halves of the queued tasks (with
-- and without a limit key) are read from their partial indexes, not the table.
SELECT queue, COUNT(*) FROM (
    SELECT queue, attempts FROM sitq_tasks WHERE status = 'queued' AND limit_key IS NULL
    UNION ALL
    SELECT queue, attempts FROM sitq_tasks WHERE status = 'queued' AND limit_key IS NOT NULL
) queued
WHERE attempts > 0
GROUP BY queue

-- name: oldest_waiting
-- Per queue, the oldest ready task's time and how many are ready (due by ?1):
-- two halves, one per index (ready tasks without and with a limit key).
SELECT queue, MIN(available_at), COUNT(*) FROM (
    SELECT queue, available_at FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND available_at <= ?1
    UNION ALL
    SELECT queue, available_at FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NOT NULL AND available_at <= ?1
)
GROUP BY queue

-- name: claimed_counts
-- The range condition on lease_expires_at reads held tasks from their partial
-- index instead of scanning the table (so in running_tasks).
SELECT queue, worker_id, COUNT(*) FROM sitq_tasks
WHERE status = 'running' AND started_at IS NULL AND lease_expires_at >= 0
GROUP BY queue, worker_id

-- name: running_tasks
SELECT id, queue, func_name, status, priority, attempts, max_retries, enqueued_at,
    available_at, started_at, finished_at, worker_id, result, error, traceback,
    progress_done, progress_total, progress_message, progress_at
FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at >= 0 AND started_at IS NOT NULL
ORDER BY started_at

-- name: recent_failures
SELECT id, queue, func_name, status, priority, attempts, max_retries, enqueued_at,
    available_at, started_at, finished_at, worker_id, result, error, traceback,
    progress_done, progress_total, progress_message, progress_at
FROM sitq_tasks
WHERE status = 'failed' AND finished_at >= 0
ORDER BY finished_at DESC
LIMIT ?1
