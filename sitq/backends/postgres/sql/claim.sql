-- The worker's side of a task: claim, lease, start, finish, release.
--
-- SKIP LOCKED: concurrent claimers each take different rows, never waiting. A
-- claimed task has not started: its worker records the start later (finish's
-- started_at, or mark_started).

-- name: claim_ready
-- The ready tasks without a limit key of the queues in $4. `queue = ANY($4)`
-- would make PostgreSQL (before 17) read and sort every ready task of the queues
-- on each claim: instead each queue's head is read from the ready index in claim
-- order (at most $5 rows each, locked as they are read, skipping those other
-- claimers hold), and the heads are merged. The rows a queue gave beyond the $5
-- taken stay locked until this statement's transaction ends, a moment later.
-- The claim commits without waiting for its WAL flush (async_commit, as in
-- claim_ready_one_queue; the finish waits for its own, and so flushes the claim's).
WITH heads AS (
    SELECT h.id, h.priority, h.available_at, h.seq
    FROM (SELECT DISTINCT name FROM unnest($4::text[]) AS n(name)) AS q
    CROSS JOIN LATERAL (
        SELECT id, priority, available_at, seq FROM {s}.sitq_tasks
        WHERE status = 'queued' AND queue = q.name AND available_at <= $2
          AND limit_key IS NULL
        ORDER BY priority DESC, available_at, seq
        LIMIT $5
        FOR UPDATE SKIP LOCKED
    ) AS h
    WHERE q.name NOT IN (SELECT queue FROM {s}.sitq_paused)
),
picked AS (
    SELECT id FROM heads ORDER BY priority DESC, available_at, seq LIMIT $5
)
UPDATE {s}.sitq_tasks t
SET status = 'running', worker_id = $1, attempts = t.attempts + 1,
    started_at = NULL, lease_expires_at = $3
FROM picked, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE t.id = picked.id
RETURNING t.id, t.queue, t.func_name, t.payload, t.attempts, t.max_retries, t.retry_backoff,
    t.timeout, t.enqueued_at, t.priority, t.available_at, t.seq, t.recorded_start

-- name: claim_ready_one_queue
-- claim_ready for one queue (the usual case): the ready index hands rows over
-- in claim order, so the claim stops after LIMIT rows; `queue = ANY(...)` would
-- make PostgreSQL (before 17) read and sort every ready task of the queues instead.
-- It commits without waiting for its WAL flush (async_commit: a flush took most
-- of a claim's time). A claim lost in a server crash leaves its tasks queued as if
-- never claimed, so they may run again (at least once, as after a lost lease); no
-- task and no result is lost (enqueues and finishes commit durably).
-- Never run it in a transaction that writes anything else: that too would commit so.
WITH picked AS (
    SELECT id FROM {s}.sitq_tasks
    WHERE status = 'queued' AND queue = ($4::text[])[1] AND available_at <= $2
      AND queue NOT IN (SELECT queue FROM {s}.sitq_paused)
      AND limit_key IS NULL
    ORDER BY priority DESC, available_at, seq
    LIMIT $5
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.sitq_tasks t
SET status = 'running', worker_id = $1, attempts = t.attempts + 1,
    started_at = NULL, lease_expires_at = $3
FROM picked, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
WHERE t.id = picked.id
RETURNING t.id, t.queue, t.func_name, t.payload, t.attempts, t.max_retries, t.retry_backoff,
    t.timeout, t.enqueued_at, t.priority, t.available_at, t.seq, t.recorded_start

-- name: claim_limited
-- claim_ready for the tasks of one limit key ($6), each queue's head read in
-- claim order from the limited ready index (see claim_ready).
WITH heads AS (
    SELECT h.id, h.priority, h.available_at, h.seq
    FROM (SELECT DISTINCT name FROM unnest($4::text[]) AS n(name)) AS q
    CROSS JOIN LATERAL (
        SELECT id, priority, available_at, seq FROM {s}.sitq_tasks
        WHERE status = 'queued' AND limit_key = $6 AND queue = q.name AND available_at <= $2
        ORDER BY priority DESC, available_at, seq
        LIMIT $5
        FOR UPDATE SKIP LOCKED
    ) AS h
    WHERE q.name NOT IN (SELECT queue FROM {s}.sitq_paused)
),
picked AS (
    SELECT id FROM heads ORDER BY priority DESC, available_at, seq LIMIT $5
)
UPDATE {s}.sitq_tasks t
SET status = 'running', worker_id = $1, attempts = t.attempts + 1,
    started_at = NULL, lease_expires_at = $3
FROM picked WHERE t.id = picked.id
RETURNING t.id, t.queue, t.func_name, t.payload, t.attempts, t.max_retries, t.retry_backoff,
    t.timeout, t.enqueued_at, t.priority, t.available_at, t.seq, t.recorded_start

-- name: reclaim_expired
-- A running task whose lease ran out lost its worker (see reclaim_expired in
-- sitq/backends/sqlite/sql/claim.sql). It ends when
--     cancel_requested OR (its start was recorded AND attempts >= max_retries + 1 + $2)
-- Only a task its worker is known to have started is charged the attempt; any
-- other goes back as if released, marked -1. A start is known from its record
-- (a start mark, written up to 50 ms late, is only shown: a task beside a
-- suspect that kills the worker must not be charged).
UPDATE {s}.sitq_tasks
SET status = CASE
        WHEN cancel_requested THEN 'cancelled'
        WHEN (cancel_requested OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + $2)) THEN 'failed'
        ELSE 'queued' END,
    error = CASE
        WHEN cancel_requested THEN 'cancelled while its worker was lost'
        WHEN (cancel_requested OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + $2))
            THEN 'WorkerLost: the worker running this task died ' || attempts || ' times'
        ELSE error END,
    finished_at = CASE WHEN (cancel_requested OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + $2)) THEN $1::float8 ELSE NULL END,
    expires_at = CASE WHEN (cancel_requested OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + $2))
        THEN $1::float8 + COALESCE(result_ttl, $3::float8) ELSE NULL END,
    attempts = CASE WHEN (recorded_start = attempts) THEN attempts ELSE attempts - 1 END,
    -- back in the queue: no holder, no start of the lost run
    started_at = CASE WHEN (cancel_requested OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + $2)) THEN started_at END,
    worker_id = CASE WHEN (cancel_requested OR ((recorded_start = attempts) AND attempts >= max_retries + 1 + $2)) THEN worker_id END,
    recorded_start = -1,
    lease_expires_at = NULL
WHERE status = 'running' AND lease_expires_at < $1::float8

-- name: record_task_start
-- The worker is about to run a held task that was once lost unstarted: if its
-- worker dies from here on, this attempt counts (see reclaim_expired), from the
-- start time stored with it.
UPDATE {s}.sitq_tasks SET recorded_start = attempts, started_at = $4::float8
WHERE id = $1 AND worker_id = $2 AND attempts = $3 AND status = 'running'

-- name: renew_leases
-- The rows read by key and locked in id order, as finish's.
WITH locked AS (
    SELECT t.id, t.status, t.worker_id
    FROM (SELECT id FROM unnest($3::text[]) AS o(id) ORDER BY id) AS v
    CROSS JOIN LATERAL (
        SELECT x.id, x.status, x.worker_id FROM {s}.sitq_tasks x WHERE x.id = v.id FOR UPDATE
    ) AS t
)
UPDATE {s}.sitq_tasks t SET lease_expires_at = $1
FROM locked
WHERE t.id = locked.id AND locked.status = 'running' AND locked.worker_id = $2
RETURNING t.id, t.cancel_requested

-- name: finish
-- One statement (one round trip): the update, and a NOTIFY of each kind in $11
-- once anything was applied (delivered at commit). $13 holds each run's start
-- (NULL: keep the stored one). The rows are locked in id order first, the order
-- every other locker of several tasks takes them in (the settling of dependents,
-- a retry's lock_tasks): updated in the batch's order, as the join happens to
-- visit them, two such statements could each hold a row the other waits for.
-- Each row is read by its key (a LATERAL lookup per outcome, the outcomes sorted
-- by id, so the locks are taken in that order) and the lease checked on what was
-- locked (the row cannot change after that). Planned as a join instead, a large
-- batch made the planner read the whole table and hash it; a status test on the
-- table let it scan the running index and every dead entry a drain left there;
-- and joining the outcomes to the locked rows afterwards rescanned the arrays
-- once per row.
WITH locked AS (
    SELECT t.id, t.status AS held_status, t.worker_id AS held_by, t.attempts AS held_attempt,
        v.worker_id, v.attempt, v.status, v.result, v.error, v.traceback, v.retry_at,
        v.started_at
    FROM (
        SELECT * FROM unnest($3::text[], $4::text[], $5::int[], $6::text[], $7::bytea[],
            $8::text[], $9::text[], $10::float8[], $13::float8[])
            AS o(id, worker_id, attempt, status, result, error, traceback, retry_at, started_at)
        ORDER BY id
    ) AS v
    CROSS JOIN LATERAL (
        SELECT x.id, x.status, x.worker_id, x.attempts FROM {s}.sitq_tasks x
        WHERE x.id = v.id FOR UPDATE
    ) AS t
),
done AS (
UPDATE {s}.sitq_tasks t
SET status = CASE WHEN v.status = 'queued' AND t.cancel_requested THEN 'cancelled'
                  ELSE v.status END,
    result = v.result, error = v.error, traceback = v.traceback,
    available_at = COALESCE(v.retry_at, t.available_at),
    finished_at = CASE WHEN v.status = 'queued' AND NOT t.cancel_requested THEN NULL
                       ELSE $1::float8 END,
    expires_at = CASE WHEN v.status = 'queued' AND NOT t.cancel_requested THEN NULL
                      ELSE $1::float8 + COALESCE(t.result_ttl, $2::float8) END,
    lease_expires_at = NULL, started_at = COALESCE(v.started_at, t.started_at)
FROM locked v
WHERE t.id = v.id AND v.held_status = 'running' AND v.held_by = v.worker_id
    AND v.held_attempt = v.attempt
RETURNING t.id, t.worker_id, t.attempts
),
woken AS (SELECT pg_notify($12, kind) FROM unnest($11::text[]) AS k(kind))
SELECT id, worker_id, attempts, (SELECT count(*) FROM woken) FROM done

-- name: mark_started
-- Start marks of tasks still running; each applies only while its lease holds.
-- The rows are read by key and locked in id order, the lease checked on what was
-- locked, as in finish.
WITH locked AS (
    SELECT t.id, t.status AS held_status, t.worker_id AS held_by, t.attempts AS held_attempt,
        v.worker_id, v.attempt, v.started_at
    FROM (
        SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[])
            AS o(id, worker_id, attempt, started_at)
        ORDER BY id
    ) AS v
    CROSS JOIN LATERAL (
        SELECT x.id, x.status, x.worker_id, x.attempts FROM {s}.sitq_tasks x
        WHERE x.id = v.id FOR UPDATE
    ) AS t
)
UPDATE {s}.sitq_tasks t SET started_at = v.started_at
FROM locked v
WHERE t.id = v.id AND v.held_status = 'running' AND v.held_by = v.worker_id
    AND v.held_attempt = v.attempt

-- name: release
-- Its rows locked in id order first, as finish's.
WITH locked AS (
    SELECT id, status, worker_id, attempts FROM {s}.sitq_tasks WHERE id = ANY($3::text[])
    ORDER BY id FOR UPDATE
)
UPDATE {s}.sitq_tasks t
SET status = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempts = t.attempts - 1, worker_id = NULL, lease_expires_at = NULL, started_at = NULL,
    finished_at = CASE WHEN t.cancel_requested THEN $1::float8 END,
    expires_at = CASE WHEN t.cancel_requested
        THEN $1::float8 + COALESCE(t.result_ttl, $2::float8) END,
    error = CASE WHEN t.cancel_requested THEN 'cancelled before it started' ELSE t.error END
FROM unnest($3::text[], $4::text[], $5::int[]) AS v(id, worker_id, attempt), locked
WHERE t.id = locked.id AND locked.id = v.id AND locked.worker_id = v.worker_id
    AND locked.attempts = v.attempt AND locked.status = 'running'
RETURNING t.id

-- name: next_due_in_queue
-- The earliest available_at among the queued tasks of queue $1 without a limit
-- key, read from the ready index with one seek per distinct priority (a loose
-- index scan), for at most 32 priorities: the second column is 1 when there are
-- more (the time is then unknown, and the worker waits its poll interval).
WITH RECURSIVE levels(priority, depth) AS (
    SELECT MAX(priority), 1 FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND queue = $1
    UNION ALL
    SELECT (SELECT MAX(t.priority) FROM {s}.sitq_tasks t
            WHERE t.status = 'queued' AND t.limit_key IS NULL AND t.queue = $1
              AND t.priority < levels.priority), levels.depth + 1
    FROM levels WHERE levels.priority IS NOT NULL AND levels.depth <= 32
)
SELECT MIN(CASE WHEN depth <= 32 THEN (SELECT MIN(t.available_at) FROM {s}.sitq_tasks t
            WHERE t.status = 'queued' AND t.limit_key IS NULL AND t.queue = $1
              AND t.priority = levels.priority) END),
    MAX(CASE WHEN depth > 32 THEN 1 ELSE 0 END)
FROM levels WHERE levels.priority IS NOT NULL

-- name: next_lease_expiry
-- The first lease to run out, from the running tasks' index.
SELECT MIN(lease_expires_at) FROM {s}.sitq_tasks WHERE status = 'running'

-- name: limited_due
-- What an idle worker of the queues in $2 waits for under limits, per limit key
-- with a queued task in them (paused queues left out): the concurrency room and
-- the starts left in the window (NULL: not limited that way), when the oldest
-- start in the window leaves it (by $1, this host's clock: a skew from the
-- database's, in which starts are recorded, moves the wait by as much), and,
-- only where the concurrency room is not full, the earliest available_at of
-- those tasks. A full concurrency room frees when a running task ends, which
-- wakes the workers (or when its lease runs out, which next_due counts already).
SELECT running_room, starts_left, window_frees_at,
    CASE WHEN running_room IS NULL OR running_room > 0 THEN
        (SELECT min(t.available_at) FROM {s}.sitq_tasks t
         WHERE t.status = 'queued' AND t.limit_key = k.key AND t.queue = ANY($2)
           AND t.queue NOT IN (SELECT queue FROM {s}.sitq_paused))
    END
FROM (
    SELECT l.key AS key,
        l.max_running - (SELECT count(*) FROM {s}.sitq_tasks r
                         WHERE r.limit_key = l.key AND r.status = 'running') AS running_room,
        l.max_starts - (SELECT count(*) FROM {s}.sitq_limit_starts st
                        WHERE st.key = l.key
                          AND st.started_at > $1 - l.per_seconds) AS starts_left,
        (SELECT min(st.started_at) FROM {s}.sitq_limit_starts st
         WHERE st.key = l.key AND st.started_at > $1 - l.per_seconds)
            + l.per_seconds AS window_frees_at
    FROM {s}.sitq_limits l
    WHERE (SELECT true FROM {s}.sitq_tasks t
           WHERE t.status = 'queued' AND t.limit_key = l.key AND t.queue = ANY($2)
             AND t.queue NOT IN (SELECT queue FROM {s}.sitq_paused)
           LIMIT 1)
) AS k
