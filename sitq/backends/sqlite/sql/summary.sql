-- The status summary: counts, and what waits and runs now. A claimed task
-- that has not started counts as queued (base.STATUS_SQL). Nothing here reads
-- every finished task: those are counted by sitq_finished (schema version 11).

-- name: live_counts
-- Queued and running tasks per queue, from their partial indexes (as many entries
-- as live tasks, however many finished ones the table keeps): the queued tasks in
-- two halves (without and with a limit key), then the held ones, a claimed one
-- that has not started counting as queued.
SELECT queue, 'queued', COUNT(*) FROM sitq_tasks
WHERE status = 'queued' AND limit_key IS NULL GROUP BY queue
UNION ALL
SELECT queue, 'queued', COUNT(*) FROM sitq_tasks
WHERE status = 'queued' AND limit_key IS NOT NULL GROUP BY queue
UNION ALL
SELECT queue, CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END AS state, COUNT(*)
FROM sitq_tasks WHERE status = 'running' AND lease_expires_at >= 0 GROUP BY queue, state

-- name: finished_counts
-- The finished tasks per queue and status, kept as they finish (schema version 11;
-- since 12 by the statements that end running tasks and one trigger for the rest).
SELECT queue, state, SUM(n) FROM sitq_finished GROUP BY queue, state HAVING SUM(n) <> 0

-- name: finished_since
-- Those finished in second ?1 or later.
SELECT queue, state, SUM(n) FROM sitq_finished WHERE second >= ?1
GROUP BY queue, state HAVING SUM(n) <> 0

-- name: scan_finished_since
-- Those finished since ?1 further back than the seconds sitq_finished keeps: a scan.
SELECT queue, status, COUNT(*) FROM sitq_tasks
WHERE finished_at >= ?1 AND status IN ('succeeded', 'failed', 'cancelled')
GROUP BY queue, status

-- name: fold_finished
-- prune: the seconds before ?1 into second 0, in two statements (this, then
-- drop_folded) in one transaction.
INSERT INTO sitq_finished (second, queue, state, n)
SELECT 0, queue, state, SUM(n) FROM sitq_finished WHERE second < ?1 AND second <> 0
GROUP BY queue, state
ON CONFLICT (second, queue, state) DO UPDATE SET n = n + excluded.n

-- name: drop_folded
DELETE FROM sitq_finished WHERE (second < ?1 AND second <> 0) OR n = 0

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
SELECT CAST(id AS TEXT), queue, func_name, status, priority, attempts, max_retries, enqueued_at,
    available_at, started_at, finished_at, worker_id, result, error, traceback,
    progress_done, progress_total, progress_message, progress_at
FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at >= 0 AND started_at IS NOT NULL
ORDER BY started_at

-- name: recent_failures
SELECT CAST(id AS TEXT), queue, func_name, status, priority, attempts, max_retries, enqueued_at,
    available_at, started_at, finished_at, worker_id, result, error, traceback,
    progress_done, progress_total, progress_message, progress_at
FROM sitq_tasks
WHERE status = 'failed' AND finished_at >= 0
ORDER BY finished_at DESC
LIMIT ?1
