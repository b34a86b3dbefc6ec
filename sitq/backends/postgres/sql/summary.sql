-- The status summary: counts, and what waits and runs now. A claimed task
-- that has not started counts as queued (base.STATUS_SQL). Nothing here reads
-- every finished task: those are counted by sitq_finished (schema version 11).

-- name: live_counts
-- Queued and running tasks per queue, from their partial indexes (as many entries
-- as live tasks, however many finished ones the table keeps): the queued tasks in
-- two halves (without and with a limit key), then the held ones, a claimed one
-- that has not started counting as queued.
SELECT queue, 'queued', count(*) FROM {s}.sitq_tasks
WHERE status = 'queued' AND limit_key IS NULL GROUP BY queue
UNION ALL
SELECT queue, 'queued', count(*) FROM {s}.sitq_tasks
WHERE status = 'queued' AND limit_key IS NOT NULL GROUP BY queue
UNION ALL
SELECT queue, CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END AS state, count(*)
FROM {s}.sitq_tasks WHERE status = 'running' GROUP BY queue, state

-- name: finished_counts
-- The finished tasks per queue and status: the sum of the changes the triggers
-- recorded (schema version 11).
SELECT queue, state, sum(n) FROM {s}.sitq_finished GROUP BY queue, state HAVING sum(n) <> 0

-- name: finished_since
-- Those finished in second $1 or later.
SELECT queue, state, sum(n) FROM {s}.sitq_finished WHERE second >= $1::bigint
GROUP BY queue, state HAVING sum(n) <> 0

-- name: scan_finished_since
-- Those finished since $1 further back than the seconds sitq_finished keeps: a scan.
SELECT queue, status, count(*) FROM {s}.sitq_tasks
WHERE finished_at >= $1::float8 AND status IN ('succeeded', 'failed', 'cancelled')
GROUP BY queue, status

-- name: fold_finished
-- prune: the recorded changes summed, one row per second, queue and status, the
-- seconds before $1 into second 0. One statement: a change committed meanwhile
-- is either folded or left as it is. One pruning worker at a time (the others
-- skip it: their rows would wait for the first's), by a lock held to its commit.
WITH folded AS (
    DELETE FROM {s}.sitq_finished
    WHERE (SELECT pg_try_advisory_xact_lock(hashtext('sitq_finished'), hashtext('{s}')))
    RETURNING second, queue, state, n
)
INSERT INTO {s}.sitq_finished (second, queue, state, n)
SELECT CASE WHEN second < $1::bigint THEN 0 ELSE second END, queue, state, sum(n)
FROM folded GROUP BY 1, 2, 3 HAVING sum(n) <> 0

-- name: drop_folded
-- Nothing: fold_finished replaced what it folded in its one statement.
SELECT $1::bigint

-- name: retrying_counts
-- Queued tasks that ran before, per queue: both halves of the queued tasks (with
-- and without a limit key) are read from their partial indexes, not the table.
SELECT queue, count(*) FROM (
    SELECT queue, attempts FROM {s}.sitq_tasks WHERE status = 'queued' AND limit_key IS NULL
    UNION ALL
    SELECT queue, attempts FROM {s}.sitq_tasks WHERE status = 'queued' AND limit_key IS NOT NULL
) queued
WHERE attempts > 0
GROUP BY queue

-- name: oldest_waiting
-- Per queue, the oldest ready task's time and how many are ready (due by $1):
-- two halves, one per index (ready tasks without and with a limit key).
SELECT queue, min(available_at), count(*) FROM (
    SELECT queue, available_at FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND available_at <= $1
    UNION ALL
    SELECT queue, available_at FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NOT NULL AND available_at <= $1
) ready
GROUP BY queue

-- name: claimed_counts
SELECT queue, worker_id, count(*) FROM {s}.sitq_tasks
WHERE status = 'running' AND started_at IS NULL
GROUP BY queue, worker_id

-- name: running_tasks
SELECT id, queue, func_name, status, priority, attempts, max_retries, enqueued_at,
    available_at, started_at, finished_at, worker_id, result, error, traceback,
    progress_done, progress_total, progress_message, progress_at
FROM {s}.sitq_tasks
WHERE status = 'running' AND started_at IS NOT NULL
ORDER BY started_at

-- name: recent_failures
SELECT id, queue, func_name, status, priority, attempts, max_retries, enqueued_at,
    available_at, started_at, finished_at, worker_id, result, error, traceback,
    progress_done, progress_total, progress_message, progress_at
FROM {s}.sitq_tasks
WHERE status = 'failed'
ORDER BY finished_at DESC
LIMIT $1
