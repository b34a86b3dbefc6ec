-- Concurrency and rate limits, and paused queues.

-- name: list_limits
SELECT key, max_running, max_starts, per_seconds FROM {s}.sitq_limits ORDER BY key

-- name: any_limit
SELECT key, max_running, max_starts, per_seconds FROM {s}.sitq_limits ORDER BY key LIMIT 1

-- name: set_limit
INSERT INTO {s}.sitq_limits (key, max_running, max_starts, per_seconds) VALUES ($1, $2, $3, $4)
ON CONFLICT (key) DO UPDATE SET max_running = EXCLUDED.max_running,
    max_starts = EXCLUDED.max_starts, per_seconds = EXCLUDED.per_seconds

-- name: delete_limit
DELETE FROM {s}.sitq_limits WHERE key = $1

-- name: lock_limits
-- Locks every limit row, so limited claims on all hosts take turns: the counts
-- of limit_room then cannot change under this claimer until it commits.
SELECT key FROM {s}.sitq_limits ORDER BY key FOR UPDATE

-- name: limit_room
-- Per limit key with a ready task: the concurrency room and the starts left
-- in the sliding window (NULL: not limited that way), in the database's clock.
SELECT l.key,
    l.max_running - (SELECT count(*) FROM {s}.sitq_tasks r
                     WHERE r.limit_key = l.key AND r.status = 'running'),
    l.max_starts - (SELECT count(*) FROM {s}.sitq_limit_starts st
                    WHERE st.key = l.key
                      AND st.started_at > extract(epoch from clock_timestamp()) - l.per_seconds),
    l.per_seconds
FROM {s}.sitq_limits l
-- A per-key probe of the index (a scalar subquery): as an EXISTS, the planner
-- may hash-join every waiting limited task instead.
WHERE (SELECT true FROM {s}.sitq_tasks t
       WHERE t.limit_key = l.key AND t.status = 'queued' AND t.available_at <= $1
       LIMIT 1)

-- name: record_starts
INSERT INTO {s}.sitq_limit_starts (key, started_at)
SELECT $1, extract(epoch from clock_timestamp()) FROM generate_series(1, $2)

-- name: forget_starts
DELETE FROM {s}.sitq_limit_starts
WHERE key = $1 AND started_at <= extract(epoch from clock_timestamp()) - $2

-- name: unlimit_tasks
-- A lifted limit's tasks become ordinary tasks (claimed by the main claim).
UPDATE {s}.sitq_tasks SET limit_key = NULL WHERE limit_key = $1

-- name: delete_limit_starts
DELETE FROM {s}.sitq_limit_starts WHERE key = $1

-- name: pause_queue
-- Paused queues: the claims skip them.
INSERT INTO {s}.sitq_paused (queue, paused_at) VALUES ($1, $2) ON CONFLICT DO NOTHING

-- name: resume_queue
DELETE FROM {s}.sitq_paused WHERE queue = $1

-- name: paused_queues
SELECT queue FROM {s}.sitq_paused ORDER BY queue
