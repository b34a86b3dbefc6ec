"""The SQLite schema, its versions, and the named queries the backend runs.

Kept apart from the backend's logic so the SQL can be read in one place.
"""

from __future__ import annotations

from sitq.backends.base import CLAIMED_SQL, STATUS_SQL

SCHEMA_VERSION = 7

# Each entry upgrades the schema from version (key - 1) to version key.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE IF NOT EXISTS sitq_meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE sitq_tasks (
            id TEXT PRIMARY KEY,
            queue TEXT NOT NULL,
            func_name TEXT NOT NULL,
            payload BLOB NOT NULL,
            status TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            enqueued_at REAL NOT NULL,
            available_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL DEFAULT 0,
            retry_backoff REAL NOT NULL DEFAULT 1.0,
            timeout REAL,
            unique_key TEXT,
            result_ttl REAL,
            worker_id TEXT,
            lease_expires_at REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            started_at REAL,
            finished_at REAL,
            expires_at REAL,
            result BLOB,
            error TEXT,
            traceback TEXT
        )
        """,
        # Serves the claim: ready tasks of a queue in priority, time, enqueue order.
        """
        CREATE INDEX sitq_tasks_ready ON sitq_tasks (queue, priority DESC, available_at)
        WHERE status = 'queued'
        """,
        # Serves lease renewal and the reclaim of expired leases (few rows).
        """
        CREATE INDEX sitq_tasks_running ON sitq_tasks (lease_expires_at)
        WHERE status = 'running'
        """,
        """
        CREATE INDEX sitq_tasks_expiry ON sitq_tasks (expires_at)
        WHERE expires_at IS NOT NULL
        """,
        """
        CREATE TABLE sitq_workers (
            id TEXT PRIMARY KEY,
            hostname TEXT NOT NULL,
            pid INTEGER NOT NULL,
            queues TEXT NOT NULL,
            concurrency INTEGER NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            stopped_at REAL
        )
        """,
    ),
    # Named batches: which tasks belong to a batch, in input order. ``size``
    # counts every task ever added, so tasks pruned since show up as missing.
    2: (
        """
        CREATE TABLE sitq_batches (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            size INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE sitq_batch_tasks (
            batch_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            task_id TEXT NOT NULL,
            PRIMARY KEY (batch_id, position)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX sitq_batch_tasks_task ON sitq_batch_tasks (task_id)",
        # A task that is pruned or purged leaves its batches too (SQLite's foreign
        # keys are off unless every connection turns them on, so a trigger).
        """
        CREATE TRIGGER sitq_tasks_leave_batches AFTER DELETE ON sitq_tasks
        BEGIN
            DELETE FROM sitq_batch_tasks WHERE task_id = OLD.id;
        END
        """,
    ),
    # The latest failures for `sitq status`, from a partial index only failed
    # rows enter (so the drain path pays nothing for it). Counts per status stay
    # a table scan (about 0.5 s per million rows here): a (queue, status) index
    # made them 7x faster but cost 10% of enqueue and 6% of drain throughput.
    3: (
        """
        CREATE INDEX sitq_tasks_failed ON sitq_tasks (finished_at)
        WHERE status = 'failed'
        """,
    ),
    # Unique jobs, limits, paused queues and schedules.
    4: (
        "ALTER TABLE sitq_tasks ADD COLUMN limit_key TEXT",
        # unique_key was stored but not enforced before: keep the oldest holder
        # of a key among live tasks, so the unique index can be built.
        """
        UPDATE sitq_tasks SET unique_key = NULL
        WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
          AND rowid NOT IN (
            SELECT MIN(rowid) FROM sitq_tasks
            WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
            GROUP BY unique_key)
        """,
        # At most one queued or running task per unique key.
        """
        CREATE UNIQUE INDEX sitq_tasks_unique ON sitq_tasks (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
        """,
        # Tasks under a limit are claimed apart, by key: the main claim's index
        # leaves them out, so a backlog held back by its limit costs it nothing.
        "DROP INDEX sitq_tasks_ready",
        """
        CREATE INDEX sitq_tasks_ready ON sitq_tasks (queue, priority DESC, available_at)
        WHERE status = 'queued' AND limit_key IS NULL
        """,
        """
        CREATE INDEX sitq_tasks_limited_ready
        ON sitq_tasks (limit_key, queue, priority DESC, available_at)
        WHERE status = 'queued' AND limit_key IS NOT NULL
        """,
        """
        CREATE INDEX sitq_tasks_limited_running ON sitq_tasks (limit_key)
        WHERE status = 'running' AND limit_key IS NOT NULL
        """,
        "CREATE TABLE sitq_paused (queue TEXT PRIMARY KEY, paused_at REAL NOT NULL)",
        """
        CREATE TABLE sitq_limits (
            key TEXT PRIMARY KEY,
            max_running INTEGER,
            max_starts INTEGER,
            per_seconds REAL
        )
        """,
        # Every start of a rate-limited task, kept for its limit's window: a
        # retry's start counts too (a task row only keeps its latest start).
        "CREATE TABLE sitq_limit_starts (key TEXT NOT NULL, started_at REAL NOT NULL)",
        "CREATE INDEX sitq_limit_starts_key ON sitq_limit_starts (key, started_at)",
        """
        CREATE TABLE sitq_schedules (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            last_run_at REAL NOT NULL,
            next_run_at REAL,
            updated_at REAL NOT NULL
        )
        """,
    ),
    # Workflow runs (sitq.workflow): a run, its steps and each step's items,
    # with status, result, error and attempts, so a killed run resumes from the
    # same database its tasks live in. Results are serialized by the layer above.
    5: (
        """
        CREATE TABLE sitq_workflow_runs (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            name TEXT,
            text TEXT NOT NULL,
            params BLOB NOT NULL,
            params_preview TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL
        )
        """,
        "CREATE INDEX sitq_workflow_runs_created ON sitq_workflow_runs (created_at)",
        """
        CREATE TABLE sitq_workflow_steps (
            run_id TEXT NOT NULL,
            name TEXT NOT NULL,
            position INTEGER NOT NULL,
            status TEXT NOT NULL,
            total INTEGER NOT NULL,
            has_items INTEGER NOT NULL,
            items BLOB,
            result BLOB,
            result_preview TEXT,
            error TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            PRIMARY KEY (run_id, name)
        )
        """,
        """
        CREATE TABLE sitq_workflow_items (
            run_id TEXT NOT NULL,
            step TEXT NOT NULL,
            idx INTEGER NOT NULL,
            item_preview TEXT,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            result BLOB,
            result_preview TEXT,
            error TEXT,
            traceback TEXT,
            task_id TEXT,
            ran_on TEXT,
            started_at REAL,
            finished_at REAL,
            PRIMARY KEY (run_id, step, idx)
        )
        """,
    ),
    # Which tasks a dead worker had started (20.5): only those are charged an
    # attempt when their lease expires. See RECLAIM_EXPIRED.
    6: ("ALTER TABLE sitq_tasks ADD COLUMN recorded_start INTEGER NOT NULL DEFAULT 0",),
    # The newest batches a page at a time (the dashboard), without sorting them all.
    7: ("CREATE INDEX sitq_batches_newest ON sitq_batches (created_at DESC, id)",),
}

TASK_COLUMNS = (
    "id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, result, error, traceback"
)

# Column order is NewTask's field order, so a NewTask binds as the row.
INSERT_TASK = """
INSERT INTO sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at,
    available_at, max_retries, retry_backoff, timeout, unique_key, result_ttl, limit_key)
VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, (SELECT key FROM sitq_limits WHERE key = ?))
"""

# A task with a unique key: nothing is inserted while another queued or running
# task holds the key (the unique index), and EXISTING_UNIQUE finds that one.
INSERT_UNIQUE_TASK = INSERT_TASK.rstrip() + " ON CONFLICT DO NOTHING"

EXISTING_UNIQUE = """
SELECT id FROM sitq_tasks WHERE unique_key = ? AND status IN ('queued', 'running')
"""

# {queues} is filled with one placeholder per queue name; @which picks the
# unlimited tasks (CLAIM) or those of one limit key (CLAIM_LIMITED, one more
# parameter after the time). A claimed task has not started: its worker
# records the start later (FINISH's started_at, or MARK_STARTED).
_CLAIM_SHAPE = """
UPDATE sitq_tasks
SET status = 'running', worker_id = ?, attempts = attempts + 1,
    started_at = NULL, lease_expires_at = ?
WHERE rowid IN (
    SELECT rowid FROM sitq_tasks
    WHERE status = 'queued' AND queue IN ({queues}) AND available_at <= ?
      AND queue NOT IN (SELECT queue FROM sitq_paused)
      AND @which
    ORDER BY priority DESC, available_at, rowid
    LIMIT ?
)
RETURNING id, queue, func_name, payload, attempts, max_retries, retry_backoff, timeout,
    enqueued_at, priority, available_at, rowid, recorded_start
"""

CLAIM = _CLAIM_SHAPE.replace("@which", "limit_key IS NULL")

# A running task whose lease ran out lost its worker. It runs again, unless it
# was asked to cancel, or it has already been lost too often (a task that kills
# its worker every time must not loop forever).
#
# Only a task whose start was recorded (recorded_start = attempts, see
# RECORD_TASK_START) is charged the attempt. Any other (prefetched, or started
# with only a start mark, which is written up to 50 ms late and only shown) goes
# back as if released, marked -1: whoever claims it next records its start
# before running it, and runs no two such tasks at once, so a task that kills its
# worker is charged from its second loss on, and bystanders never are. A task
# going back to the queue keeps neither the lost run's start nor its holder.
_LOST_STARTED = "(recorded_start = attempts)"
_LOST_ENDS = (
    f"(cancel_requested = 1 OR ({_LOST_STARTED} AND attempts >= max_retries + 1 + :lost_limit))"
)

RECLAIM_EXPIRED = f"""
UPDATE sitq_tasks
SET status = CASE
        WHEN cancel_requested = 1 THEN 'cancelled'
        WHEN {_LOST_ENDS} THEN 'failed'
        ELSE 'queued' END,
    error = CASE
        WHEN cancel_requested = 1 THEN 'cancelled while its worker was lost'
        WHEN {_LOST_ENDS}
            THEN 'WorkerLost: the worker running this task died ' || attempts || ' times'
        ELSE error END,
    finished_at = CASE WHEN {_LOST_ENDS} THEN :now ELSE NULL END,
    expires_at = CASE WHEN {_LOST_ENDS} THEN :now + COALESCE(result_ttl, :ttl) ELSE NULL END,
    attempts = CASE WHEN {_LOST_STARTED} THEN attempts ELSE attempts - 1 END,
    -- back in the queue: no holder, no start of the lost run
    started_at = CASE WHEN {_LOST_ENDS} THEN started_at END,
    worker_id = CASE WHEN {_LOST_ENDS} THEN worker_id END,
    recorded_start = -1,
    lease_expires_at = NULL
WHERE status = 'running' AND lease_expires_at < :now
"""

# The worker is about to run a held task that was once lost unstarted: if its
# worker dies from here on, this attempt counts (see RECLAIM_EXPIRED). The start
# time is stored with it, so a task then failed as WorkerLost shows when it began.
RECORD_TASK_START = """
UPDATE sitq_tasks SET recorded_start = attempts, started_at = ?
WHERE id = ? AND worker_id = ? AND attempts = ? AND status = 'running'
"""

# Only the tasks the worker still runs: one whose outcome it failed to store
# must be left to expire and run again.
RENEW_LEASES = """
UPDATE sitq_tasks SET lease_expires_at = ?
WHERE status = 'running' AND worker_id = ? AND id IN (SELECT value FROM json_each(?))
RETURNING id, cancel_requested
"""

TOUCH_WORKER = "UPDATE sitq_workers SET heartbeat_at = ? WHERE id = ?"

# A final outcome (succeeded, failed, cancelled): the hot path, kept lean. The
# start time comes with it (NULL: keep the stored one).
FINISH = """
UPDATE sitq_tasks
SET status = ?, result = ?, error = ?, traceback = ?, finished_at = ?,
    expires_at = ? + COALESCE(result_ttl, ?), lease_expires_at = NULL,
    started_at = COALESCE(?, started_at)
WHERE id = ? AND worker_id = ? AND attempts = ? AND status = 'running'
"""

# :status 'queued' with :retry_at means "run again later", unless a cancel was
# asked for meanwhile.
FINISH_OR_RETRY = """
UPDATE sitq_tasks
SET status = CASE WHEN :status = 'queued' AND cancel_requested = 1 THEN 'cancelled'
                  ELSE :status END,
    result = :result, error = :error, traceback = :traceback,
    available_at = COALESCE(:retry_at, available_at),
    started_at = COALESCE(:started_at, started_at),
    finished_at = CASE WHEN :status = 'queued' AND cancel_requested = 0 THEN NULL
                       ELSE :now END,
    expires_at = CASE WHEN :status = 'queued' AND cancel_requested = 0 THEN NULL
                      ELSE :now + COALESCE(result_ttl, :ttl) END,
    lease_expires_at = NULL
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'running'
"""

# Start marks of tasks still running, as a JSON array of
# [id, worker_id, attempt, started_at]; each applies only while its lease holds.
MARK_STARTED = """
UPDATE sitq_tasks SET started_at = m.started_at
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS worker_id,
             json_extract(value, '$[2]') AS attempt, json_extract(value, '$[3]') AS started_at
      FROM json_each(?)) AS m
WHERE sitq_tasks.id = m.id AND sitq_tasks.worker_id = m.worker_id
    AND sitq_tasks.attempts = m.attempt AND sitq_tasks.status = 'running'
"""

# Back to the queue, the attempt not counted; but a task asked to cancel meanwhile
# is cancelled rather than run again.
RELEASE = """
UPDATE sitq_tasks
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    attempts = attempts - 1, worker_id = NULL, lease_expires_at = NULL, started_at = NULL,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    expires_at = CASE WHEN cancel_requested = 1 THEN :now + COALESCE(result_ttl, :ttl) END,
    error = CASE WHEN cancel_requested = 1 THEN 'cancelled before it started' ELSE error END
WHERE id = :id AND worker_id = :worker_id AND attempts = :attempt AND status = 'running'
"""

CANCEL_QUEUED = """
UPDATE sitq_tasks
SET status = 'cancelled', finished_at = :now, error = 'cancelled before it started',
    expires_at = :now + COALESCE(result_ttl, :ttl)
WHERE id = :id AND status = 'queued'
"""

REQUEST_CANCEL = """
UPDATE sitq_tasks SET cancel_requested = 1 WHERE id = ? AND status = 'running'
"""

# {where} selects the tasks to queue again.
RETRY = """
UPDATE sitq_tasks
SET status = 'queued', attempts = 0, available_at = ?, result = NULL, error = NULL,
    traceback = NULL, started_at = NULL, finished_at = NULL, expires_at = NULL,
    worker_id = NULL, lease_expires_at = NULL, cancel_requested = 0
WHERE status IN ('failed', 'cancelled') AND {where}
  AND (unique_key IS NULL OR (
    NOT EXISTS (
      SELECT 1 FROM sitq_tasks live WHERE live.unique_key = sitq_tasks.unique_key
        AND live.status IN ('queued', 'running'))
    -- of several finished tasks with one key, only one comes back
    AND id = (
      SELECT min(id) FROM sitq_tasks done WHERE done.unique_key = sitq_tasks.unique_key
        AND done.status IN ('failed', 'cancelled'))))
"""

# Claimed tasks that have not started count as queued.
COUNTS = f"""
SELECT queue, {STATUS_SQL} AS state, COUNT(*) FROM sitq_tasks GROUP BY queue, state
"""

# The same scan, also counting the tasks finished since a time (no index on
# finished_at for every row: drain would pay for it on each finish).
COUNTS_AND_FINISHED = f"""
SELECT queue, {STATUS_SQL} AS state, COUNT(*), COUNT(CASE WHEN finished_at >= ? THEN 1 END)
FROM sitq_tasks GROUP BY queue, state
"""

# Queued tasks that ran before, per queue: both halves of the queued tasks (with
# and without a limit key) are read from their partial indexes, not the table.
RETRYING_COUNTS = """
SELECT queue, COUNT(*) FROM (
    SELECT queue, attempts FROM sitq_tasks WHERE status = 'queued' AND limit_key IS NULL
    UNION ALL
    SELECT queue, attempts FROM sitq_tasks WHERE status = 'queued' AND limit_key IS NOT NULL
) queued
WHERE attempts > 0
GROUP BY queue
"""

# The range condition on lease_expires_at lets SQLite read running tasks from
# their partial index instead of scanning the table.
RUNNING_TASKS = f"""
SELECT {TASK_COLUMNS} FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at >= 0 AND started_at IS NOT NULL
ORDER BY started_at
"""

CLAIMED_COUNTS = f"""
SELECT queue, worker_id, COUNT(*) FROM sitq_tasks
WHERE {CLAIMED_SQL} AND lease_expires_at >= 0
GROUP BY queue, worker_id
"""

RECENT_FAILURES = f"""
SELECT {TASK_COLUMNS} FROM sitq_tasks
WHERE status = 'failed' AND finished_at >= 0
ORDER BY finished_at DESC
LIMIT ?
"""

# Two halves, one per index (ready tasks without and with a limit key).
OLDEST_WAITING = """
SELECT queue, MIN(available_at), COUNT(*) FROM (
    SELECT queue, available_at FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NULL AND available_at <= :now
    UNION ALL
    SELECT queue, available_at FROM sitq_tasks
    WHERE status = 'queued' AND limit_key IS NOT NULL AND available_at <= :now
)
GROUP BY queue
"""

UPSERT_WORKER = """
INSERT OR REPLACE INTO sitq_workers
    (id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at)
VALUES (?, ?, ?, ?, ?, ?, ?, NULL)
"""

STOP_WORKER = "UPDATE sitq_workers SET stopped_at = ? WHERE id = ?"

LIST_WORKERS = """
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at
FROM sitq_workers ORDER BY started_at DESC
"""

PRUNE_TASKS = "DELETE FROM sitq_tasks WHERE expires_at < ?"
PRUNE_WORKERS = "DELETE FROM sitq_workers WHERE heartbeat_at < ?"

# -- named batches ----------------------------------------------------------

CREATE_BATCH = """
INSERT INTO sitq_batches (id, created_at, size) VALUES (?, ?, 0)
ON CONFLICT (id) DO NOTHING
"""

# Reserve positions for :count new members (creating the batch if missing);
# returns the first reserved position. Run inside the enqueue's transaction.
RESERVE_BATCH_POSITIONS = """
INSERT INTO sitq_batches (id, created_at, size) VALUES (:id, :now, :count)
ON CONFLICT (id) DO UPDATE SET size = size + excluded.size
RETURNING size - :count
"""

# RESERVE_BATCH_POSITIONS as a compare-and-set: no row (so nothing reserved)
# unless the batch has :expected members (a batch that does not exist has 0).
RESERVE_BATCH_POSITIONS_IF_EMPTY = """
INSERT INTO sitq_batches (id, created_at, size) VALUES (:id, :now, :count)
ON CONFLICT (id) DO UPDATE SET size = size + excluded.size WHERE size = 0
RETURNING size - :count
"""
RESERVE_BATCH_POSITIONS_IF_SIZE = """
UPDATE sitq_batches SET size = size + :count WHERE id = :id AND size = :expected
RETURNING size - :count
"""

# The members as a JSON array of ids; json_each's key is the 0-based index.
INSERT_BATCH_TASKS = """
INSERT INTO sitq_batch_tasks (batch_id, position, task_id)
SELECT ?, ? + key, value FROM json_each(?)
"""

GET_BATCH = "SELECT id, created_at, size FROM sitq_batches WHERE id = ?"

LIST_BATCHES = "SELECT id, created_at, size FROM sitq_batches ORDER BY created_at DESC, id"
# A page of them (LIMIT -1: all); the sort keeps only the page, not every row.
LIST_BATCHES_PAGE = LIST_BATCHES + " LIMIT ? OFFSET ?"

BATCH_TASK_IDS = "SELECT task_id FROM sitq_batch_tasks WHERE batch_id = ? ORDER BY position"

BATCH_MEMBERS = """
SELECT position, task_id FROM sitq_batch_tasks WHERE batch_id = ? ORDER BY position
"""

COUNT_BATCH_STATUSES = f"""
SELECT {STATUS_SQL} AS state, COUNT(*)
FROM sitq_batch_tasks b JOIN sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = ? GROUP BY state
"""

DELETE_BATCH_TASKS = "DELETE FROM sitq_batch_tasks WHERE batch_id = ?"
DELETE_BATCH = "DELETE FROM sitq_batches WHERE id = ?"

# Any number of ids in one query: a JSON array parameter.
COUNT_STATUSES = f"""
SELECT {STATUS_SQL} AS state, COUNT(*) FROM sitq_tasks
WHERE id IN (SELECT value FROM json_each(?))
GROUP BY state
"""

TASK_STATUSES = f"""
SELECT id, {STATUS_SQL} FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?))
"""

CANCEL_QUEUED_MANY = """
UPDATE sitq_tasks
SET status = 'cancelled', finished_at = :now, error = 'cancelled before it started',
    expires_at = :now + COALESCE(result_ttl, :ttl)
WHERE status = 'queued' AND id IN (SELECT value FROM json_each(:ids))
RETURNING id
"""

# -- limits, pauses, schedules ---------------------------------------------------

LIST_LIMITS = "SELECT key, max_running, max_starts, per_seconds FROM sitq_limits ORDER BY key"

SET_LIMIT = """
INSERT INTO sitq_limits (key, max_running, max_starts, per_seconds) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET max_running = excluded.max_running,
    max_starts = excluded.max_starts, per_seconds = excluded.per_seconds
"""

DELETE_LIMIT = "DELETE FROM sitq_limits WHERE key = ?"

# How many more tasks of each limit key may start now: the concurrency room
# and the starts left in the sliding window (NULL: that limit is not set);
# only keys with a ready task.
LIMIT_ROOM = """
SELECT l.key,
    l.max_running - (SELECT COUNT(*) FROM sitq_tasks r
                     WHERE r.limit_key = l.key AND r.status = 'running'),
    l.max_starts - (SELECT COUNT(*) FROM sitq_limit_starts s
                    WHERE s.key = l.key AND s.started_at > :now - l.per_seconds),
    l.per_seconds
FROM sitq_limits l
WHERE EXISTS (SELECT 1 FROM sitq_tasks t
              WHERE t.limit_key = l.key AND t.status = 'queued' AND t.available_at <= :now)
"""

RECORD_START = "INSERT INTO sitq_limit_starts (key, started_at) VALUES (?, ?)"
FORGET_STARTS = "DELETE FROM sitq_limit_starts WHERE key = ? AND started_at <= ?"

# A lifted limit's tasks become ordinary tasks (claimed by the main claim).
UNLIMIT_TASKS = "UPDATE sitq_tasks SET limit_key = NULL WHERE limit_key = ?"
DELETE_LIMIT_STARTS = "DELETE FROM sitq_limit_starts WHERE key = ?"

CLAIM_LIMITED = _CLAIM_SHAPE.replace("@which", "limit_key = ?")

PAUSE_QUEUE = "INSERT OR IGNORE INTO sitq_paused (queue, paused_at) VALUES (?, ?)"
RESUME_QUEUE = "DELETE FROM sitq_paused WHERE queue = ?"
PAUSED_QUEUES = "SELECT queue FROM sitq_paused ORDER BY queue"

# Records the run of a schedule due at ? unless one at or after it is recorded.
ADVANCE_SCHEDULE = """
INSERT INTO sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES (:name, :spec, :due, :next, :now)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, last_run_at = excluded.last_run_at,
    next_run_at = excluded.next_run_at, updated_at = excluded.updated_at
WHERE sitq_schedules.last_run_at < excluded.last_run_at
"""

# A schedule's first sighting: recorded once, never moving a recorded time.
ADD_SCHEDULE = """
INSERT INTO sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES (:name, :spec, :due, :next, :now)
ON CONFLICT (name) DO NOTHING
"""

LIST_SCHEDULES = """
SELECT name, spec, last_run_at, next_run_at, updated_at FROM sitq_schedules ORDER BY name
"""

# -- listings for dashboards -------------------------------------------------
#
# A listing scans a bounded window of rows in keyset order from an index, then
# loads the matching tasks: no index is added for it (each would slow the
# enqueue and drain paths), and no page reads more than the window.

LIST_COLUMNS = (
    "id, queue, func_name, status, priority, attempts, max_retries, enqueued_at, "
    "available_at, started_at, finished_at, worker_id, NULL, substr(error, 1, 1000), NULL"
)

# Every task, newest id first (the primary key's index).
LIST_WINDOW_TASKS = f"""
SELECT id, id, queue, {STATUS_SQL} FROM sitq_tasks WHERE id < ? ORDER BY id DESC LIMIT ?
"""

# Failures, newest first, from their partial index; keyset (finished_at, id).
LIST_WINDOW_FAILED = """
SELECT id, finished_at, id, queue, status FROM sitq_tasks
WHERE status = 'failed' AND finished_at >= 0 AND finished_at <= :finished_at
    AND (finished_at < :finished_at OR id < :id)
ORDER BY finished_at DESC, id DESC LIMIT :limit
"""

# Running tasks from their partial index (few rows); '+id' keeps SQLite from
# walking the primary key instead.
LIST_WINDOW_RUNNING = """
SELECT id, id, queue, status FROM sitq_tasks
WHERE status = 'running' AND lease_expires_at >= 0 AND started_at IS NOT NULL AND +id < ?
ORDER BY +id DESC LIMIT ?
"""

# A batch's stored members in batch order.
LIST_WINDOW_BATCH = f"""
SELECT b.position, t.id, t.queue, {STATUS_SQL}
FROM sitq_batch_tasks b JOIN sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = ? AND b.position > ?
ORDER BY b.position LIMIT ?
"""

LIST_TASKS_BY_ID = f"""
SELECT {LIST_COLUMNS} FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?))
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
INSERT INTO sitq_workflow_runs (id, source, name, text, params, params_preview, status,
    host, pid, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""

GET_WORKFLOW_RUN = f"SELECT {WORKFLOW_RUN_COLUMNS} FROM sitq_workflow_runs WHERE id = ?"

LIST_WORKFLOW_RUNS = f"""
SELECT {WORKFLOW_RUN_COLUMNS} FROM sitq_workflow_runs ORDER BY created_at DESC, id DESC LIMIT ?
"""

# A run still 'running' has no finished_at; a new owner (host, pid) is kept
# unless given.
UPDATE_WORKFLOW_RUN = """
UPDATE sitq_workflow_runs
SET status = :status, error = :error, host = COALESCE(:host, host), pid = COALESCE(:pid, pid),
    updated_at = :now, finished_at = CASE WHEN :status = 'running' THEN NULL ELSE :now END
WHERE id = :id
"""

BEGIN_WORKFLOW_STEP = """
INSERT INTO sitq_workflow_steps (run_id, name, position, status, total, has_items, items,
    started_at)
VALUES (?, ?, ?, 'running', ?, ?, ?, ?)
ON CONFLICT (run_id, name) DO NOTHING
"""

# The items as a JSON array of previews (null: none); json_each's key is the index.
INSERT_WORKFLOW_ITEMS = """
INSERT INTO sitq_workflow_items (run_id, step, idx, item_preview, status)
SELECT ?, ?, key, value, 'pending' FROM json_each(?)
"""

UPDATE_WORKFLOW_STEP = """
UPDATE sitq_workflow_steps
SET status = :status, result = :result, result_preview = :preview, error = :error,
    finished_at = CASE WHEN :status = 'running' THEN NULL ELSE :now END
WHERE run_id = :run_id AND name = :name
"""

WORKFLOW_STEP_COLUMNS = (
    "name, position, status, total, has_items, result_preview, error, started_at, finished_at"
)

LIST_WORKFLOW_STEPS = f"""
SELECT {WORKFLOW_STEP_COLUMNS} FROM sitq_workflow_steps WHERE run_id = ? ORDER BY position
"""

GET_WORKFLOW_STEP = f"""
SELECT {WORKFLOW_STEP_COLUMNS}, items, result FROM sitq_workflow_steps
WHERE run_id = ? AND name = ?
"""

_WORKFLOW_ITEMS_SHAPE = """
SELECT idx, item_preview, status, attempts, result_preview, error, traceback, task_id, ran_on,
    started_at, finished_at, @result
FROM sitq_workflow_items WHERE run_id = ? AND step = ? ORDER BY idx
"""

# Results are loaded only when asked for.
LIST_WORKFLOW_ITEMS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "NULL")
LIST_WORKFLOW_ITEMS_WITH_RESULTS = _WORKFLOW_ITEMS_SHAPE.replace("@result", "result")

WORKFLOW_ITEM_STARTED = """
UPDATE sitq_workflow_items
SET status = 'running', ran_on = ?, attempts = COALESCE(?, attempts), error = NULL,
    traceback = NULL, started_at = ?, finished_at = NULL
WHERE run_id = ? AND step = ? AND idx = ?
"""

WORKFLOW_ITEM_ATTEMPT = """
UPDATE sitq_workflow_items SET attempts = ? WHERE run_id = ? AND step = ? AND idx = ?
"""

WORKFLOW_ITEM_SUBMITTED = """
UPDATE sitq_workflow_items SET task_id = ? WHERE run_id = ? AND step = ? AND idx = ?
"""

WORKFLOW_ITEM_FINISHED = """
UPDATE sitq_workflow_items
SET status = ?, attempts = ?, result = ?, result_preview = ?, error = ?, traceback = ?,
    finished_at = ?
WHERE run_id = ? AND step = ? AND idx = ?
"""
