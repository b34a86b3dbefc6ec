"""The PostgreSQL schema, its versions, and the named queries of the backend.

``{s}`` is the schema name (quoted identifier), so several apps can share one
server. Times are unix seconds (``double precision``), as in SQLite.
"""

from __future__ import annotations

from sitq.backends.base import CLAIMED_SQL, STATUS_SQL

SCHEMA_VERSION = 7

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS {s}.sitq_meta (key text PRIMARY KEY, value text NOT NULL)",
        """
        CREATE TABLE {s}.sitq_tasks (
            id text PRIMARY KEY,
            queue text NOT NULL,
            func_name text NOT NULL,
            payload bytea NOT NULL,
            status text NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            enqueued_at double precision NOT NULL,
            available_at double precision NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            max_retries integer NOT NULL DEFAULT 0,
            retry_backoff double precision NOT NULL DEFAULT 1.0,
            timeout double precision,
            unique_key text,
            result_ttl double precision,
            worker_id text,
            lease_expires_at double precision,
            cancel_requested boolean NOT NULL DEFAULT false,
            started_at double precision,
            finished_at double precision,
            expires_at double precision,
            result bytea,
            error text,
            traceback text,
            seq bigserial NOT NULL
        )
        """,
        # Serves the claim: ready tasks of a queue in priority, time, enqueue order.
        """
        CREATE INDEX sitq_tasks_ready ON {s}.sitq_tasks (queue, priority DESC, available_at, seq)
        WHERE status = 'queued'
        """,
        """
        CREATE INDEX sitq_tasks_running ON {s}.sitq_tasks (lease_expires_at)
        WHERE status = 'running'
        """,
        """
        CREATE INDEX sitq_tasks_expiry ON {s}.sitq_tasks (expires_at)
        WHERE expires_at IS NOT NULL
        """,
        """
        CREATE TABLE {s}.sitq_workers (
            id text PRIMARY KEY,
            hostname text NOT NULL,
            pid integer NOT NULL,
            queues text[] NOT NULL,
            concurrency integer NOT NULL,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            stopped_at double precision
        )
        """,
    ),
    # Named batches: which tasks belong to a batch, in input order. ``size``
    # counts every task ever added, so tasks pruned since show up as missing.
    # A pruned or purged task leaves its batches (cascade); deleting a batch
    # deletes its membership, never its tasks.
    2: (
        """
        CREATE TABLE {s}.sitq_batches (
            id text PRIMARY KEY,
            created_at double precision NOT NULL,
            size integer NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE {s}.sitq_batch_tasks (
            batch_id text NOT NULL REFERENCES {s}.sitq_batches (id) ON DELETE CASCADE,
            position integer NOT NULL,
            task_id text NOT NULL REFERENCES {s}.sitq_tasks (id) ON DELETE CASCADE,
            PRIMARY KEY (batch_id, position)
        )
        """,
        "CREATE INDEX sitq_batch_tasks_task ON {s}.sitq_batch_tasks (task_id)",
    ),
    # The latest failures for `sitq status`, from a partial index only failed
    # rows enter (so the drain path pays nothing for it).
    3: (
        """
        CREATE INDEX sitq_tasks_failed ON {s}.sitq_tasks (finished_at)
        WHERE status = 'failed'
        """,
    ),
    # Unique jobs, limits, paused queues and schedules.
    4: (
        "ALTER TABLE {s}.sitq_tasks ADD COLUMN limit_key text",
        # unique_key was stored but not enforced before: keep the oldest holder
        # of a key among live tasks, so the unique index can be built.
        """
        UPDATE {s}.sitq_tasks SET unique_key = NULL
        WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
          AND seq NOT IN (
            SELECT min(seq) FROM {s}.sitq_tasks
            WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
            GROUP BY unique_key)
        """,
        """
        CREATE UNIQUE INDEX sitq_tasks_unique ON {s}.sitq_tasks (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
        """,
        # Tasks under a limit are claimed apart, by key: the main claim's index
        # leaves them out, so a backlog held back by its limit costs it nothing.
        "DROP INDEX {s}.sitq_tasks_ready",
        """
        CREATE INDEX sitq_tasks_ready ON {s}.sitq_tasks (queue, priority DESC, available_at, seq)
        WHERE status = 'queued' AND limit_key IS NULL
        """,
        """
        CREATE INDEX sitq_tasks_limited_ready
        ON {s}.sitq_tasks (limit_key, queue, priority DESC, available_at, seq)
        WHERE status = 'queued' AND limit_key IS NOT NULL
        """,
        """
        CREATE INDEX sitq_tasks_limited_running ON {s}.sitq_tasks (limit_key)
        WHERE status = 'running' AND limit_key IS NOT NULL
        """,
        """
        CREATE TABLE {s}.sitq_paused (
            queue text PRIMARY KEY, paused_at double precision NOT NULL
        )
        """,
        """
        CREATE TABLE {s}.sitq_limits (
            key text PRIMARY KEY,
            max_running integer,
            max_starts integer,
            per_seconds double precision
        )
        """,
        # Every start of a rate-limited task, in the database's clock (hosts'
        # clocks differ), kept for its limit's window.
        """
        CREATE TABLE {s}.sitq_limit_starts (
            key text NOT NULL, started_at double precision NOT NULL
        )
        """,
        "CREATE INDEX sitq_limit_starts_key ON {s}.sitq_limit_starts (key, started_at)",
        """
        CREATE TABLE {s}.sitq_schedules (
            name text PRIMARY KEY,
            spec text NOT NULL,
            last_run_at double precision NOT NULL,
            next_run_at double precision,
            updated_at double precision NOT NULL
        )
        """,
    ),
    # Workflow runs (sitq.workflow): a run, its steps and each step's items,
    # with status, result, error and attempts, so a killed run resumes from the
    # same database its tasks live in. Results are serialized by the layer above.
    5: (
        """
        CREATE TABLE {s}.sitq_workflow_runs (
            id text PRIMARY KEY,
            source text NOT NULL,
            name text,
            text text NOT NULL,
            params bytea NOT NULL,
            params_preview text NOT NULL,
            status text NOT NULL,
            error text,
            host text NOT NULL,
            pid integer NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            finished_at double precision
        )
        """,
        "CREATE INDEX sitq_workflow_runs_created ON {s}.sitq_workflow_runs (created_at)",
        """
        CREATE TABLE {s}.sitq_workflow_steps (
            run_id text NOT NULL,
            name text NOT NULL,
            position integer NOT NULL,
            status text NOT NULL,
            total integer NOT NULL,
            has_items boolean NOT NULL,
            items bytea,
            result bytea,
            result_preview text,
            error text,
            started_at double precision NOT NULL,
            finished_at double precision,
            PRIMARY KEY (run_id, name)
        )
        """,
        """
        CREATE TABLE {s}.sitq_workflow_items (
            run_id text NOT NULL,
            step text NOT NULL,
            idx integer NOT NULL,
            item_preview text,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            result bytea,
            result_preview text,
            error text,
            traceback text,
            task_id text,
            ran_on text,
            started_at double precision,
            finished_at double precision,
            PRIMARY KEY (run_id, step, idx)
        )
        """,
    ),
    # Which tasks a dead worker had started (20.5): only those are charged an
    # attempt when their lease expires. See RECLAIM_EXPIRED.
    6: ("ALTER TABLE {s}.sitq_tasks ADD COLUMN recorded_start integer NOT NULL DEFAULT 0",),
    # The newest batches a page at a time (the dashboard), without sorting them all.
    7: ("CREATE INDEX sitq_batches_newest ON {s}.sitq_batches (created_at DESC, id)",),
}

TASK_COLUMNS = (
    "id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, result, error, traceback"
)

# One statement (one round trip, its own transaction) for a whole batch: arrays
# in NewTask's field order, and one NOTIFY, delivered when it commits.
INSERT_TASKS = """
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
"""

# One task with a unique key; no row comes back while another queued or
# running task holds the key (then EXISTING_UNIQUE finds it).
INSERT_UNIQUE_TASK = """
INSERT INTO {s}.sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at,
    available_at, max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key)
VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, $11, $12,
    (SELECT key FROM {s}.sitq_limits WHERE key = $13))
ON CONFLICT DO NOTHING
RETURNING id
"""

EXISTING_UNIQUE = """
SELECT id FROM {s}.sitq_tasks WHERE unique_key = $1 AND status IN ('queued', 'running')
"""

# SKIP LOCKED: concurrent claimers each take different rows, never waiting. A
# claimed task has not started: its worker records the start later (FINISH's
# started_at, or MARK_STARTED).
# @which picks the unlimited tasks (CLAIM) or those of one limit key ($6,
# CLAIM_LIMITED).
_CLAIM_SHAPE = """
WITH picked AS (
    SELECT id FROM {s}.sitq_tasks
    WHERE status = 'queued' AND @queues AND available_at <= $2
      AND queue NOT IN (SELECT queue FROM {s}.sitq_paused)
      AND @which
    ORDER BY priority DESC, available_at, seq
    LIMIT $5
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.sitq_tasks t
SET status = 'running', worker_id = $1, attempts = t.attempts + 1,
    started_at = NULL, lease_expires_at = $3
FROM picked WHERE t.id = picked.id
RETURNING t.id, t.queue, t.func_name, t.payload, t.attempts, t.max_retries, t.retry_backoff,
    t.timeout, t.enqueued_at, t.priority, t.available_at, t.seq, t.recorded_start
"""

# With one queue (the usual case) the ready index hands rows over in claim
# order, so the claim stops after LIMIT rows; `queue = ANY(...)` would make
# PostgreSQL (before 17) read and sort every ready task of the queues instead.
_ONE_QUEUE = "queue = ($4::text[])[1]"
_QUEUES = "queue = ANY($4::text[])"

CLAIM = _CLAIM_SHAPE.replace("@which", "limit_key IS NULL").replace("@queues", _QUEUES)
CLAIM_ONE_QUEUE = _CLAIM_SHAPE.replace("@which", "limit_key IS NULL").replace("@queues", _ONE_QUEUE)

# Only a task its worker is known to have started is charged the attempt; any
# other goes back as if released, marked -1 (see sitq.backends.sqlite.schema.RECLAIM_EXPIRED).
# A start is known from its record (a start mark, written up to 50 ms late, is
# only shown: a task beside a suspect that kills the worker must not be charged).
_LOST_STARTED = "(recorded_start = attempts)"
_LOST_ENDS = f"(cancel_requested OR ({_LOST_STARTED} AND attempts >= max_retries + 1 + $2))"

RECLAIM_EXPIRED = f"""
UPDATE {{s}}.sitq_tasks
SET status = CASE
        WHEN cancel_requested THEN 'cancelled'
        WHEN {_LOST_ENDS} THEN 'failed'
        ELSE 'queued' END,
    error = CASE
        WHEN cancel_requested THEN 'cancelled while its worker was lost'
        WHEN {_LOST_ENDS}
            THEN 'WorkerLost: the worker running this task died ' || attempts || ' times'
        ELSE error END,
    finished_at = CASE WHEN {_LOST_ENDS} THEN $1::float8 ELSE NULL END,
    expires_at = CASE WHEN {_LOST_ENDS}
        THEN $1::float8 + COALESCE(result_ttl, $3::float8) ELSE NULL END,
    attempts = CASE WHEN {_LOST_STARTED} THEN attempts ELSE attempts - 1 END,
    -- back in the queue: no holder, no start of the lost run
    started_at = CASE WHEN {_LOST_ENDS} THEN started_at END,
    worker_id = CASE WHEN {_LOST_ENDS} THEN worker_id END,
    recorded_start = -1,
    lease_expires_at = NULL
WHERE status = 'running' AND lease_expires_at < $1::float8
"""

# The worker is about to run a held task that was once lost unstarted: if its
# worker dies from here on, this attempt counts (see RECLAIM_EXPIRED), from the
# start time stored with it.
RECORD_TASK_START = """
UPDATE {s}.sitq_tasks SET recorded_start = attempts, started_at = $4::float8
WHERE id = $1 AND worker_id = $2 AND attempts = $3 AND status = 'running'
"""

RENEW_LEASES = """
UPDATE {s}.sitq_tasks SET lease_expires_at = $1
WHERE status = 'running' AND worker_id = $2 AND id = ANY($3::text[])
RETURNING id, cancel_requested
"""

TOUCH_WORKER = "UPDATE {s}.sitq_workers SET heartbeat_at = $1 WHERE id = $2"

# One statement (one round trip): the update, and a NOTIFY of each kind in $11
# once anything was applied (delivered at commit). $13 holds each run's start
# (NULL: keep the stored one).
FINISH = """
WITH done AS (
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
FROM unnest($3::text[], $4::text[], $5::int[], $6::text[], $7::bytea[], $8::text[],
    $9::text[], $10::float8[], $13::float8[])
    AS v(id, worker_id, attempt, status, result, error, traceback, retry_at, started_at)
WHERE t.id = v.id AND t.worker_id = v.worker_id AND t.attempts = v.attempt
    AND t.status = 'running'
RETURNING t.id, t.worker_id, t.attempts
),
woken AS (SELECT pg_notify($12, kind) FROM unnest($11::text[]) AS k(kind))
SELECT id, worker_id, attempts, (SELECT count(*) FROM woken) FROM done
"""

# Start marks of tasks still running; each applies only while its lease holds.
MARK_STARTED = """
UPDATE {s}.sitq_tasks t SET started_at = v.started_at
FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[])
    AS v(id, worker_id, attempt, started_at)
WHERE t.id = v.id AND t.worker_id = v.worker_id AND t.attempts = v.attempt
    AND t.status = 'running'
"""

RELEASE = """
UPDATE {s}.sitq_tasks t
SET status = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempts = t.attempts - 1, worker_id = NULL, lease_expires_at = NULL, started_at = NULL,
    finished_at = CASE WHEN t.cancel_requested THEN $1::float8 END,
    expires_at = CASE WHEN t.cancel_requested
        THEN $1::float8 + COALESCE(t.result_ttl, $2::float8) END,
    error = CASE WHEN t.cancel_requested THEN 'cancelled before it started' ELSE t.error END
FROM unnest($3::text[], $4::text[], $5::int[]) AS v(id, worker_id, attempt)
WHERE t.id = v.id AND t.worker_id = v.worker_id AND t.attempts = v.attempt
    AND t.status = 'running'
RETURNING t.id
"""

CANCEL_QUEUED = """
UPDATE {s}.sitq_tasks
SET status = 'cancelled', finished_at = $2::float8, error = 'cancelled before it started',
    expires_at = $2::float8 + COALESCE(result_ttl, $3::float8)
WHERE id = $1 AND status = 'queued'
RETURNING id
"""

REQUEST_CANCEL = """
UPDATE {s}.sitq_tasks SET cancel_requested = true WHERE id = $1 AND status = 'running'
RETURNING id
"""

# {where} selects the tasks to queue again; $1 is now.
RETRY = """
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
"""

# Claimed tasks that have not started count as queued.
COUNTS = f"""
SELECT queue, {STATUS_SQL} AS state, count(*) FROM {{s}}.sitq_tasks GROUP BY queue, state
"""

# The same scan, also counting the tasks finished since $1 (no index on
# finished_at for every row: drain would pay for it on each finish).
COUNTS_AND_FINISHED = f"""
SELECT queue, {STATUS_SQL} AS state, count(*),
    count(*) FILTER (WHERE finished_at >= $1::float8)
FROM {{s}}.sitq_tasks GROUP BY queue, state
"""

# Queued tasks that ran before, per queue: both halves of the queued tasks (with
# and without a limit key) are read from their partial indexes, not the table.
RETRYING_COUNTS = """
SELECT queue, COUNT(*) FROM (
    SELECT queue, attempts FROM {s}.sitq_tasks WHERE status = 'queued' AND limit_key IS NULL
    UNION ALL
    SELECT queue, attempts FROM {s}.sitq_tasks WHERE status = 'queued' AND limit_key IS NOT NULL
) queued
WHERE attempts > 0
GROUP BY queue
"""

RUNNING_TASKS = f"""
SELECT {TASK_COLUMNS} FROM {{s}}.sitq_tasks
WHERE status = 'running' AND started_at IS NOT NULL
ORDER BY started_at
"""

CLAIMED_COUNTS = f"""
SELECT queue, worker_id, count(*) FROM {{s}}.sitq_tasks WHERE {CLAIMED_SQL}
GROUP BY queue, worker_id
"""

RECENT_FAILURES = f"""
SELECT {TASK_COLUMNS} FROM {{s}}.sitq_tasks
WHERE status = 'failed'
ORDER BY finished_at DESC
LIMIT $1
"""

OLDEST_WAITING = """
SELECT queue, min(available_at), count(*) FROM (
    SELECT queue, available_at FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND available_at <= $1
    UNION ALL
    SELECT queue, available_at FROM {s}.sitq_tasks
    WHERE status = 'queued' AND limit_key IS NOT NULL AND available_at <= $1
) ready
GROUP BY queue
"""

UPSERT_WORKER = """
INSERT INTO {s}.sitq_workers
    (id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
    queues = EXCLUDED.queues, concurrency = EXCLUDED.concurrency,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, stopped_at = NULL
"""

STOP_WORKER = "UPDATE {s}.sitq_workers SET stopped_at = $1 WHERE id = $2"

LIST_WORKERS = """
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at
FROM {s}.sitq_workers ORDER BY started_at DESC
"""

PRUNE_TASKS = "DELETE FROM {s}.sitq_tasks WHERE expires_at < $1"
PRUNE_WORKERS = "DELETE FROM {s}.sitq_workers WHERE heartbeat_at < $1"

# -- named batches ----------------------------------------------------------

CREATE_BATCH = """
INSERT INTO {s}.sitq_batches (id, created_at, size) VALUES ($1, $2, 0)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# Reserve positions for $3 new members (creating the batch if missing); the
# row lock serializes producers appending to one batch. Returns the first one.
RESERVE_BATCH_POSITIONS = """
INSERT INTO {s}.sitq_batches AS b (id, created_at, size) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET size = b.size + EXCLUDED.size
RETURNING b.size - $3
"""

# RESERVE_BATCH_POSITIONS as a compare-and-set: no row (so nothing reserved)
# unless the batch has $4 members (a batch that does not exist has 0).
RESERVE_BATCH_POSITIONS_IF_EMPTY = """
INSERT INTO {s}.sitq_batches AS b (id, created_at, size) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET size = b.size + EXCLUDED.size WHERE b.size = 0
RETURNING b.size - $3
"""
RESERVE_BATCH_POSITIONS_IF_SIZE = """
UPDATE {s}.sitq_batches SET size = size + $2 WHERE id = $1 AND size = $3
RETURNING size - $2
"""

INSERT_BATCH_TASKS = """
INSERT INTO {s}.sitq_batch_tasks (batch_id, position, task_id)
SELECT $1, $2 + t.ord - 1, t.id FROM unnest($3::text[]) WITH ORDINALITY AS t(id, ord)
"""

GET_BATCH = "SELECT id, created_at, size FROM {s}.sitq_batches WHERE id = $1"

LIST_BATCHES = "SELECT id, created_at, size FROM {s}.sitq_batches ORDER BY created_at DESC, id"
# A page of them (LIMIT NULL: all); a top-N sort keeps only the page.
LIST_BATCHES_PAGE = LIST_BATCHES + " LIMIT $1::bigint OFFSET $2::bigint"

BATCH_TASK_IDS = "SELECT task_id FROM {s}.sitq_batch_tasks WHERE batch_id = $1 ORDER BY position"

BATCH_MEMBERS = """
SELECT position, task_id FROM {s}.sitq_batch_tasks WHERE batch_id = $1 ORDER BY position
"""

COUNT_BATCH_STATUSES = f"""
SELECT {STATUS_SQL} AS state, count(*)
FROM {{s}}.sitq_batch_tasks b JOIN {{s}}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $1 GROUP BY state
"""

DELETE_BATCH = "DELETE FROM {s}.sitq_batches WHERE id = $1"

COUNT_STATUSES = f"""
SELECT {STATUS_SQL} AS state, count(*) FROM {{s}}.sitq_tasks WHERE id = ANY($1::text[])
GROUP BY state
"""

TASK_STATUSES = f"SELECT id, {STATUS_SQL} FROM {{s}}.sitq_tasks WHERE id = ANY($1::text[])"

CANCEL_QUEUED_MANY = """
UPDATE {s}.sitq_tasks
SET status = 'cancelled', finished_at = $2::float8, error = 'cancelled before it started',
    expires_at = $2::float8 + COALESCE(result_ttl, $3::float8)
WHERE status = 'queued' AND id = ANY($1::text[])
RETURNING id
"""

# -- limits, pauses, schedules ---------------------------------------------------

LIST_LIMITS = "SELECT key, max_running, max_starts, per_seconds FROM {s}.sitq_limits ORDER BY key"

SET_LIMIT = """
INSERT INTO {s}.sitq_limits (key, max_running, max_starts, per_seconds) VALUES ($1, $2, $3, $4)
ON CONFLICT (key) DO UPDATE SET max_running = EXCLUDED.max_running,
    max_starts = EXCLUDED.max_starts, per_seconds = EXCLUDED.per_seconds
"""

DELETE_LIMIT = "DELETE FROM {s}.sitq_limits WHERE key = $1"

# Locks every limit row, so limited claims on all hosts take turns: the counts
# below then cannot change under this claimer until it commits.
LOCK_LIMITS = "SELECT key FROM {s}.sitq_limits ORDER BY key FOR UPDATE"

# Per limit key with a ready task: the concurrency room and the starts left
# in the sliding window (NULL: not limited that way), in the database's clock.
LIMIT_ROOM = """
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
"""

RECORD_STARTS = """
INSERT INTO {s}.sitq_limit_starts (key, started_at)
SELECT $1, extract(epoch from clock_timestamp()) FROM generate_series(1, $2)
"""

FORGET_STARTS = """
DELETE FROM {s}.sitq_limit_starts
WHERE key = $1 AND started_at <= extract(epoch from clock_timestamp()) - $2
"""

# A lifted limit's tasks become ordinary tasks (claimed by the main claim).
UNLIMIT_TASKS = "UPDATE {s}.sitq_tasks SET limit_key = NULL WHERE limit_key = $1"
DELETE_LIMIT_STARTS = "DELETE FROM {s}.sitq_limit_starts WHERE key = $1"

CLAIM_LIMITED = _CLAIM_SHAPE.replace("@which", "limit_key = $6").replace("@queues", _QUEUES)

PAUSE_QUEUE = """
INSERT INTO {s}.sitq_paused (queue, paused_at) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""
RESUME_QUEUE = "DELETE FROM {s}.sitq_paused WHERE queue = $1"
PAUSED_QUEUES = "SELECT queue FROM {s}.sitq_paused ORDER BY queue"

ADVANCE_SCHEDULE = """
INSERT INTO {s}.sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, last_run_at = EXCLUDED.last_run_at,
    next_run_at = EXCLUDED.next_run_at, updated_at = EXCLUDED.updated_at
WHERE {s}.sitq_schedules.last_run_at < EXCLUDED.last_run_at
RETURNING name
"""

# A schedule's first sighting: recorded once, never moving a recorded time.
ADD_SCHEDULE = """
INSERT INTO {s}.sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO NOTHING
RETURNING name
"""

LIST_SCHEDULES = """
SELECT name, spec, last_run_at, next_run_at, updated_at FROM {s}.sitq_schedules ORDER BY name
"""

# -- listings for dashboards -------------------------------------------------
#
# A listing scans a bounded window of rows in keyset order from an index, then
# loads the matching tasks: no index is added for it (each would slow the
# enqueue and drain paths), and no page reads more than the window. The first
# page of an id-ordered window has no bound: no string sorts after every id in
# every collation.

LIST_COLUMNS = (
    "id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, NULL::bytea, left(error, 1000), NULL"
)

# Every task, newest id first (the primary key's index). {after} is empty on the
# first page, else "AND id < $2".
LIST_WINDOW_TASKS = f"""
SELECT id, id, queue, {STATUS_SQL} FROM {{{{s}}}}.sitq_tasks WHERE true {{after}}
ORDER BY id DESC LIMIT $1
"""

# Failures, newest first, from their partial index; keyset (finished_at, id).
LIST_WINDOW_FAILED = """
SELECT id, finished_at, id, queue, status FROM {s}.sitq_tasks
WHERE status = 'failed' AND finished_at <= $2::float8
    AND (finished_at < $2::float8 OR id < $3)
ORDER BY finished_at DESC, id DESC LIMIT $1
"""

# Running tasks from their partial index (few rows).
LIST_WINDOW_RUNNING = """
SELECT id, id, queue, status FROM {{s}}.sitq_tasks
WHERE status = 'running' AND lease_expires_at IS NOT NULL AND started_at IS NOT NULL {after}
ORDER BY id DESC LIMIT $1
"""

# A batch's stored members in batch order.
LIST_WINDOW_BATCH = f"""
SELECT b.position, t.id, t.queue, {STATUS_SQL}
FROM {{s}}.sitq_batch_tasks b JOIN {{s}}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $2 AND b.position > $3
ORDER BY b.position LIMIT $1
"""

LIST_TASKS_BY_ID = f"""
SELECT {LIST_COLUMNS} FROM {{s}}.sitq_tasks WHERE id = ANY($1::text[])
"""

# -- workflow runs (sitq.workflow) ---------------------------------------------
#
# Each item change is one single-row UPDATE by primary key: a workflow of
# thousands of items pays one cheap commit per change.

WORKFLOW_RUN_COLUMNS = (
    "id, source, name, text, params, params_preview, status, error, host, pid, "
    "created_at, updated_at, finished_at"
)

CREATE_WORKFLOW_RUN = """
INSERT INTO {s}.sitq_workflow_runs (id, source, name, text, params, params_preview, status,
    host, pid, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $9)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

GET_WORKFLOW_RUN = f"SELECT {WORKFLOW_RUN_COLUMNS} FROM {{s}}.sitq_workflow_runs WHERE id = $1"

LIST_WORKFLOW_RUNS = f"""
SELECT {WORKFLOW_RUN_COLUMNS} FROM {{s}}.sitq_workflow_runs
ORDER BY created_at DESC, id DESC LIMIT $1
"""

# A run still 'running' has no finished_at; a new owner (host, pid) is kept
# unless given.
UPDATE_WORKFLOW_RUN = """
UPDATE {s}.sitq_workflow_runs
SET status = $2, error = $3, host = COALESCE($4, host), pid = COALESCE($5, pid),
    updated_at = $6::float8,
    finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE $6::float8 END
WHERE id = $1
"""

BEGIN_WORKFLOW_STEP = """
INSERT INTO {s}.sitq_workflow_steps (run_id, name, position, status, total, has_items, items,
    started_at)
VALUES ($1, $2, $3, 'running', $4, $5, $6, $7)
ON CONFLICT (run_id, name) DO NOTHING
RETURNING name
"""

# The items' previews as an array (NULL: none); the index is 0-based.
INSERT_WORKFLOW_ITEMS = """
INSERT INTO {s}.sitq_workflow_items (run_id, step, idx, item_preview, status)
SELECT $1, $2, u.i - 1, u.preview, 'pending'
FROM unnest($3::text[]) WITH ORDINALITY AS u(preview, i)
"""

UPDATE_WORKFLOW_STEP = """
UPDATE {s}.sitq_workflow_steps
SET status = $3, result = $4, result_preview = $5, error = $6,
    finished_at = CASE WHEN $3 = 'running' THEN NULL ELSE $7::float8 END
WHERE run_id = $1 AND name = $2
"""

WORKFLOW_STEP_COLUMNS = (
    "name, position, status, total, has_items, result_preview, error, started_at, finished_at"
)

LIST_WORKFLOW_STEPS = f"""
SELECT {WORKFLOW_STEP_COLUMNS} FROM {{s}}.sitq_workflow_steps WHERE run_id = $1
ORDER BY position
"""

GET_WORKFLOW_STEP = f"""
SELECT {WORKFLOW_STEP_COLUMNS}, items, result FROM {{s}}.sitq_workflow_steps
WHERE run_id = $1 AND name = $2
"""

_WORKFLOW_ITEMS_SHAPE = """
SELECT idx, item_preview, status, attempts, result_preview, error, traceback, task_id, ran_on,
    started_at, finished_at, @result
FROM {s}.sitq_workflow_items WHERE run_id = $1 AND step = $2 ORDER BY idx
"""

# Results are loaded only when asked for.
LIST_WORKFLOW_ITEMS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "NULL::bytea")
LIST_WORKFLOW_ITEMS_WITH_RESULTS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "result")

WORKFLOW_ITEM_STARTED = """
UPDATE {s}.sitq_workflow_items
SET status = 'running', ran_on = $4, attempts = COALESCE($6, attempts), error = NULL,
    traceback = NULL, started_at = $5, finished_at = NULL
WHERE run_id = $1 AND step = $2 AND idx = $3
"""

WORKFLOW_ITEM_ATTEMPT = """
UPDATE {s}.sitq_workflow_items SET attempts = $4 WHERE run_id = $1 AND step = $2 AND idx = $3
"""

WORKFLOW_ITEM_SUBMITTED = """
UPDATE {s}.sitq_workflow_items SET task_id = $4 WHERE run_id = $1 AND step = $2 AND idx = $3
"""

WORKFLOW_ITEM_FINISHED = """
UPDATE {s}.sitq_workflow_items
SET status = $4, attempts = $5, result = $6, result_preview = $7, error = $8, traceback = $9,
    finished_at = $10
WHERE run_id = $1 AND step = $2 AND idx = $3
"""
