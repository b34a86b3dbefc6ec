-- Concurrency and rate limits, and paused queues.

-- name: list_limits
SELECT key, max_running, max_starts, per_seconds FROM sitq_limits ORDER BY key

-- name: any_limit
SELECT 1 FROM sitq_limits LIMIT 1

-- name: set_limit
INSERT INTO sitq_limits (key, max_running, max_starts, per_seconds) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET max_running = excluded.max_running,
    max_starts = excluded.max_starts, per_seconds = excluded.per_seconds

-- name: delete_limit
DELETE FROM sitq_limits WHERE key = ?

-- name: limit_room
-- How many more tasks of each limit key may start now: the concurrency room
-- and the starts left in the sliding window (NULL: that limit is not set);
-- only keys with a ready task.
SELECT l.key,
    l.max_running - (SELECT COUNT(*) FROM sitq_tasks r
                     WHERE r.limit_key = l.key AND r.status = 'running'),
    l.max_starts - (SELECT COUNT(*) FROM sitq_limit_starts s
                    WHERE s.key = l.key AND s.started_at > :now - l.per_seconds),
    l.per_seconds
FROM sitq_limits l
WHERE EXISTS (SELECT 1 FROM sitq_tasks t
              WHERE t.limit_key = l.key AND t.status = 'queued' AND t.available_at <= :now)

-- name: record_start
INSERT INTO sitq_limit_starts (key, started_at) VALUES (?, ?)

-- name: forget_starts
DELETE FROM sitq_limit_starts WHERE key = ? AND started_at <= ?

-- name: unlimit_tasks
-- A lifted limit's tasks become ordinary tasks (claimed by the main claim).
UPDATE sitq_tasks SET limit_key = NULL WHERE limit_key = ?

-- name: delete_limit_starts
DELETE FROM sitq_limit_starts WHERE key = ?

-- Paused queues: claim_ready and claim_limited skip them.

-- name: pause_queue
INSERT OR IGNORE INTO sitq_paused (queue, paused_at) VALUES (?, ?)

-- name: resume_queue
DELETE FROM sitq_paused WHERE queue = ?

-- name: paused_queues
SELECT queue FROM sitq_paused ORDER BY queue
