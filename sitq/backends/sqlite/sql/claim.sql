-- The worker's side of a task: claim, lease, start, finish, release.
--
-- A claimed task has not started: its worker records the start later
-- (finish's started_at, or mark_started).

-- name: claim_ready
-- {queues} is one ? per queue name. The ready tasks without a limit key,
-- from their partial index (sitq_tasks_ready).
UPDATE sitq_tasks
SET status = 'running', worker_id = ?, attempts = attempts + 1,
    started_at = NULL, lease_expires_at = ?
WHERE rowid IN (
    SELECT rowid FROM sitq_tasks
    WHERE status = 'queued' AND queue IN ({queues}) AND available_at <= ?
      AND queue NOT IN (SELECT queue FROM sitq_paused)
      AND limit_key IS NULL
    ORDER BY priority DESC, available_at, rowid
    LIMIT ?
)
RETURNING CAST(id AS TEXT), queue, func_name, payload, attempts, max_retries, retry_backoff, timeout,
    enqueued_at, priority, available_at, rowid, recorded_start

-- name: claim_limited
-- claim_ready for the tasks of one limit key (one more parameter after the time).
UPDATE sitq_tasks
SET status = 'running', worker_id = ?, attempts = attempts + 1,
    started_at = NULL, lease_expires_at = ?
WHERE rowid IN (
    SELECT rowid FROM sitq_tasks
    WHERE status = 'queued' AND queue IN ({queues}) AND available_at <= ?
      AND queue NOT IN (SELECT queue FROM sitq_paused)
      AND limit_key = ?
    ORDER BY priority DESC, available_at, rowid
    LIMIT ?
)
RETURNING CAST(id AS TEXT), queue, func_name, payload, attempts, max_retries, retry_backoff, timeout,
    enqueued_at, priority, available_at, rowid, recorded_start

-- name: reclaim_expired
-- A running task whose lease ran out lost its worker. It runs again, unless it
-- was asked to cancel, or it has already been lost too often (a task that kills
-- its worker every time must not loop forever): it ends when
--     cancel_requested = 1 OR (its start was recorded AND attempts >= max_retries + 1 + ?2)
--
-- Only a task whose start was recorded (recorded_start = attempts, see
-- record_task_start) is charged the attempt. Any other (prefetched, or started
-- with only a start mark, which is written up to 50 ms late and only shown) goes
-- back as if released, marked -1: whoever claims it next records its start
-- before running it, and runs no two such tasks at once, so a task that kills its
-- worker is charged from its second loss on, and bystanders never are. A task
-- going back to the queue keeps neither the lost run's start nor its holder.
UPDATE sitq_tasks
SET status = CASE
        WHEN cancel_requested = 1 THEN 'cancelled'
        WHEN (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2)) THEN 'failed'
        ELSE 'queued' END,
    error = CASE
        WHEN cancel_requested = 1 THEN 'cancelled while its worker was lost'
        WHEN (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2))
            THEN 'WorkerLost: the worker running this task died ' || attempts || ' times'
        ELSE error END,
    finished_at = CASE WHEN (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2)) THEN ?1 ELSE NULL END,
    expires_at = CASE WHEN (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2)) THEN ?1 + COALESCE(result_ttl, ?3) ELSE NULL END,
    attempts = CASE WHEN (recorded_start = attempts) THEN attempts ELSE attempts - 1 END,
    -- back in the queue: no holder, no start of the lost run
    started_at = CASE WHEN (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2)) THEN started_at END,
    worker_id = CASE WHEN (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2)) THEN worker_id END,
    recorded_start = -1,
    lease_expires_at = NULL
WHERE status = 'running' AND lease_expires_at < ?1

-- name: record_task_start
-- The worker is about to run a held task that was once lost unstarted: if its
-- worker dies from here on, this attempt counts (see reclaim_expired). The start
-- time is stored with it, so a task then failed as WorkerLost shows when it began.
UPDATE sitq_tasks SET recorded_start = attempts, started_at = ?4
WHERE id = ?1 AND worker_id = ?2 AND attempts = ?3 AND status = 'running'

-- name: renew_leases
-- Only the tasks the worker still runs: one whose outcome it failed to store
-- must be left to expire and run again.
UPDATE sitq_tasks SET lease_expires_at = ?
WHERE status = 'running' AND worker_id = ? AND id IN (SELECT value FROM json_each(?))
RETURNING CAST(id AS TEXT), cancel_requested

-- name: finish
-- A final outcome (succeeded, failed, cancelled): the hot path, kept lean. The
-- row: status, result, error, traceback, now, ttl, started_at (NULL: keep the
-- stored one), then the lease (id, worker_id, attempt).
UPDATE sitq_tasks
SET status = ?1, result = ?2, error = ?3, traceback = ?4, finished_at = ?5,
    expires_at = ?5 + COALESCE(result_ttl, ?6), lease_expires_at = NULL,
    started_at = COALESCE(?7, started_at)
WHERE id = ?8 AND worker_id = ?9 AND attempts = ?10 AND status = 'running'

-- name: finish_rows
-- finish for many outcomes in one statement: {values} is one "(?, ...)" of
-- finish's ten parameters per outcome (a row of NULLs matches no task). One
-- statement is one step for SQLite, where executemany is one step per row, and
-- Python's sqlite3 lets go of the GIL around each step: each row then waited for
-- the event loop to hand the GIL back (up to its 5 ms switch interval).
UPDATE sitq_tasks
SET status = v.status, result = v.result, error = v.error, traceback = v.traceback,
    finished_at = v.now, expires_at = v.now + COALESCE(result_ttl, v.ttl),
    lease_expires_at = NULL, started_at = COALESCE(v.started_at, sitq_tasks.started_at)
FROM (
    SELECT column1 AS status, column2 AS result, column3 AS error, column4 AS traceback,
        column5 AS now, column6 AS ttl, column7 AS started_at, column8 AS id,
        column9 AS worker_id, column10 AS attempts
    FROM (VALUES {values})
) AS v
WHERE sitq_tasks.id = v.id AND sitq_tasks.worker_id = v.worker_id
    AND sitq_tasks.attempts = v.attempts AND sitq_tasks.status = 'running'

-- name: finish_or_retry
-- finish's row and ?11, the retry time: status 'queued' means "run again
-- then", unless a cancel was asked for meanwhile.
UPDATE sitq_tasks
SET status = CASE WHEN ?1 = 'queued' AND cancel_requested = 1 THEN 'cancelled' ELSE ?1 END,
    result = ?2, error = ?3, traceback = ?4,
    available_at = COALESCE(?11, available_at),
    started_at = COALESCE(?7, started_at),
    finished_at = CASE WHEN ?1 = 'queued' AND cancel_requested = 0 THEN NULL ELSE ?5 END,
    expires_at = CASE WHEN ?1 = 'queued' AND cancel_requested = 0 THEN NULL
                      ELSE ?5 + COALESCE(result_ttl, ?6) END,
    lease_expires_at = NULL
WHERE id = ?8 AND worker_id = ?9 AND attempts = ?10 AND status = 'running'

-- name: count_finished
-- The tasks a finish just ended, counted (schema version 12: a move out of
-- 'running' is counted by the statement that makes it, the trigger
-- sitq_tasks_ended counts the others). ?1 the finish's time, ?2 its leases as a
-- JSON array of [id, worker_id, attempt], each once: a task whose lease held has
-- that finished_at now, and a final status (a retry has none, or ended cancelled).
-- (A lease refused here because an earlier finish applied it, at the very same
-- clock reading, would count twice: a real clock never reads the same twice
-- across two finishes.)
INSERT INTO sitq_finished (second, queue, state, n)
SELECT CAST(?1 AS INTEGER), t.queue, t.status, count(*)
FROM json_each(?2) AS v
JOIN sitq_tasks AS t ON t.id = json_extract(v.value, '$[0]')
WHERE t.worker_id = json_extract(v.value, '$[1]') AND t.attempts = json_extract(v.value, '$[2]')
  AND t.finished_at = ?1
  AND (t.status = 'succeeded' OR t.status = 'failed' OR t.status = 'cancelled')
GROUP BY t.queue, t.status
ON CONFLICT (second, queue, state) DO UPDATE SET n = n + excluded.n

-- name: count_ended
-- ?4 tasks of queue ?2 that a finish at ?1 ended with status ?3, counted (a finish
-- whose every outcome was final and applied knows them without count_finished).
INSERT INTO sitq_finished (second, queue, state, n) VALUES (CAST(?1 AS INTEGER), ?2, ?3, ?4)
ON CONFLICT (second, queue, state) DO UPDATE SET n = n + excluded.n

-- name: count_released
-- Run just before release, with its parameters (each lease once): the tasks it
-- ends (cancelled, as they were asked to), counted (see count_finished).
INSERT INTO sitq_finished (second, queue, state, n)
SELECT CAST(?1 AS INTEGER), t.queue, 'cancelled', count(*)
FROM json_each(?3) AS v
JOIN sitq_tasks AS t ON t.id = json_extract(v.value, '$[0]')
WHERE t.worker_id = json_extract(v.value, '$[1]') AND t.attempts = json_extract(v.value, '$[2]')
  AND t.status = 'running' AND t.cancel_requested = 1
GROUP BY t.queue
ON CONFLICT (second, queue, state) DO UPDATE SET n = n + excluded.n

-- name: count_reclaimed
-- Run just before reclaim_expired, with its first two parameters: the tasks it
-- ends (cancelled, or failed as lost too often; its conditions), counted (see
-- count_finished).
INSERT INTO sitq_finished (second, queue, state, n)
SELECT CAST(?1 AS INTEGER), queue,
    CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'failed' END AS ended, count(*)
FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at < ?1
  AND (cancel_requested = 1 OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + ?2))
GROUP BY queue, ended
ON CONFLICT (second, queue, state) DO UPDATE SET n = n + excluded.n

-- name: mark_started
-- Start marks of tasks still running, as a JSON array of
-- [id, worker_id, attempt, started_at]; each applies only while its lease holds.
UPDATE sitq_tasks SET started_at = m.started_at
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS worker_id,
             json_extract(value, '$[2]') AS attempt, json_extract(value, '$[3]') AS started_at
      FROM json_each(?)) AS m
WHERE sitq_tasks.id = m.id AND sitq_tasks.worker_id = m.worker_id
    AND sitq_tasks.attempts = m.attempt AND sitq_tasks.status = 'running'

-- name: release
-- Back to the queue, the attempt not counted; but a task asked to cancel meanwhile
-- is cancelled rather than run again. ?3 is a JSON array of [id, worker_id, attempt].
UPDATE sitq_tasks
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    attempts = attempts - 1, worker_id = NULL, lease_expires_at = NULL, started_at = NULL,
    finished_at = CASE WHEN cancel_requested = 1 THEN ?1 END,
    expires_at = CASE WHEN cancel_requested = 1 THEN ?1 + COALESCE(result_ttl, ?2) END,
    error = CASE WHEN cancel_requested = 1 THEN 'cancelled before it started' ELSE error END
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS worker_id,
             json_extract(value, '$[2]') AS attempt
      FROM json_each(?3)) AS v
WHERE sitq_tasks.id = v.id AND sitq_tasks.worker_id = v.worker_id
    AND sitq_tasks.attempts = v.attempt AND sitq_tasks.status = 'running'
RETURNING CAST(id AS TEXT)

-- name: next_due_in_queue
-- The earliest available_at among the queued tasks of queue ?1 without a limit
-- key, read from the ready index with one seek per distinct priority (a loose
-- index scan), for at most 32 priorities: the second column is 1 when there are
-- more (the time is then unknown, and the worker waits its poll interval).
WITH RECURSIVE levels(priority, depth) AS (
    SELECT MAX(priority), 1 FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND queue = ?1
    UNION ALL
    SELECT (SELECT MAX(t.priority) FROM sitq_tasks t
            WHERE t.status = 'queued' AND t.limit_key IS NULL AND t.queue = ?1
              AND t.priority < levels.priority), levels.depth + 1
    FROM levels WHERE levels.priority IS NOT NULL AND levels.depth <= 32
)
SELECT MIN(CASE WHEN depth <= 32 THEN (SELECT MIN(t.available_at) FROM sitq_tasks t
            WHERE t.status = 'queued' AND t.limit_key IS NULL AND t.queue = ?1
              AND t.priority = levels.priority) END),
    MAX(CASE WHEN depth > 32 THEN 1 ELSE 0 END)
FROM levels WHERE levels.priority IS NOT NULL

-- name: next_lease_expiry
-- The first lease to run out, from the running tasks' index.
SELECT MIN(lease_expires_at) FROM sitq_tasks WHERE status = 'running'

-- name: limited_due
-- What an idle worker of the queues in the JSON array ?2 waits for under
-- limits, per limit key with a queued task in them (paused queues left out):
-- the concurrency room and the starts left in the window (NULL: not limited
-- that way), when the oldest start in the window leaves it, and, only where
-- the concurrency room is not full, the earliest available_at of those tasks.
-- A full concurrency room frees when a running task ends, which wakes the
-- workers (or when its lease runs out, which next_due counts already).
SELECT running_room, starts_left, window_frees_at,
    CASE WHEN running_room IS NULL OR running_room > 0 THEN
        (SELECT MIN(t.available_at) FROM sitq_tasks t
         WHERE t.status = 'queued' AND t.limit_key = k.key
           AND t.queue IN (SELECT value FROM json_each(?2))
           AND t.queue NOT IN (SELECT queue FROM sitq_paused))
    END
FROM (
    SELECT l.key AS key,
        l.max_running - (SELECT COUNT(*) FROM sitq_tasks r
                         WHERE r.limit_key = l.key AND r.status = 'running') AS running_room,
        l.max_starts - (SELECT COUNT(*) FROM sitq_limit_starts s
                        WHERE s.key = l.key AND s.started_at > ?1 - l.per_seconds) AS starts_left,
        (SELECT MIN(s.started_at) FROM sitq_limit_starts s
         WHERE s.key = l.key AND s.started_at > ?1 - l.per_seconds) + l.per_seconds
            AS window_frees_at
    FROM sitq_limits l
    WHERE EXISTS (SELECT 1 FROM sitq_tasks t
                  WHERE t.status = 'queued' AND t.limit_key = l.key
                    AND t.queue IN (SELECT value FROM json_each(?2))
                    AND t.queue NOT IN (SELECT queue FROM sitq_paused))
) AS k
