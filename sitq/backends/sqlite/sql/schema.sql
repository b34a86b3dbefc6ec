-- The schema: its versions (DDL and data migrations) and the sitq_meta
-- queries that track them.
--
-- A query named vN_MM_label is statement MM of the migration to version N:
-- schema.MIGRATIONS runs them in that order. A released migration never
-- changes: add a version instead (and raise schema.SCHEMA_VERSION).

-- name: has_meta_table
SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sitq_meta'

-- name: file_tables
-- In one snapshot: whether the file holds sitq's tables, and how many tables it
-- holds (two statements could see another process create sitq's tables between
-- them, and count them as foreign).
SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sitq_meta'),
    (SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%')

-- name: read_schema_version
SELECT value FROM sitq_meta WHERE key = 'schema_version'

-- name: write_schema_version
INSERT OR REPLACE INTO sitq_meta (key, value) VALUES ('schema_version', ?)

-- Version 1: tasks and workers.

-- name: v1_01_create_sitq_meta
CREATE TABLE IF NOT EXISTS sitq_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)

-- name: v1_02_create_sitq_tasks
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

-- name: v1_03_create_sitq_tasks_ready
-- Serves the claim: ready tasks of a queue in priority, time, enqueue order.
CREATE INDEX sitq_tasks_ready ON sitq_tasks (queue, priority DESC, available_at)
WHERE status = 'queued'

-- name: v1_04_create_sitq_tasks_running
-- Serves lease renewal and the reclaim of expired leases (few rows).
CREATE INDEX sitq_tasks_running ON sitq_tasks (lease_expires_at)
WHERE status = 'running'

-- name: v1_05_create_sitq_tasks_expiry
CREATE INDEX sitq_tasks_expiry ON sitq_tasks (expires_at)
WHERE expires_at IS NOT NULL

-- name: v1_06_create_sitq_workers
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

-- Version 2: named batches: which tasks belong to a batch, in input order. ``size``
-- counts every task ever added, so tasks pruned since show up as missing.

-- name: v2_01_create_sitq_batches
CREATE TABLE sitq_batches (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
)

-- name: v2_02_create_sitq_batch_tasks
CREATE TABLE sitq_batch_tasks (
    batch_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, position)
) WITHOUT ROWID

-- name: v2_03_create_sitq_batch_tasks_task
CREATE INDEX sitq_batch_tasks_task ON sitq_batch_tasks (task_id)

-- name: v2_04_create_sitq_tasks_leave_batches
-- A task that is pruned or purged leaves its batches too (SQLite's foreign
-- keys are off unless every connection turns them on, so a trigger).
CREATE TRIGGER sitq_tasks_leave_batches AFTER DELETE ON sitq_tasks
BEGIN
    DELETE FROM sitq_batch_tasks WHERE task_id = OLD.id;
END

-- Version 3: the latest failures for `sitq status`, from a partial index only failed
-- rows enter (so the drain path pays nothing for it). Counts per status stay
-- a table scan (about 0.5 s per million rows here): a (queue, status) index
-- made them 7x faster but cost 10% of enqueue and 6% of drain throughput.

-- name: v3_01_create_sitq_tasks_failed
CREATE INDEX sitq_tasks_failed ON sitq_tasks (finished_at)
WHERE status = 'failed'

-- Version 4: unique jobs, limits, paused queues and schedules.

-- name: v4_01_add_limit_key
ALTER TABLE sitq_tasks ADD COLUMN limit_key TEXT

-- name: v4_02_dedupe_unique_keys
-- unique_key was stored but not enforced before: keep the oldest holder
-- of a key among live tasks, so the unique index can be built.
UPDATE sitq_tasks SET unique_key = NULL
WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
  AND rowid NOT IN (
    SELECT MIN(rowid) FROM sitq_tasks
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
    GROUP BY unique_key)

-- name: v4_03_create_sitq_tasks_unique
-- At most one queued or running task per unique key.
CREATE UNIQUE INDEX sitq_tasks_unique ON sitq_tasks (unique_key)
WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')

-- name: v4_04_drop_sitq_tasks_ready
-- Tasks under a limit are claimed apart, by key: the main claim's index
-- leaves them out, so a backlog held back by its limit costs it nothing.
DROP INDEX sitq_tasks_ready

-- name: v4_05_create_sitq_tasks_ready
CREATE INDEX sitq_tasks_ready ON sitq_tasks (queue, priority DESC, available_at)
WHERE status = 'queued' AND limit_key IS NULL

-- name: v4_06_create_sitq_tasks_limited_ready
CREATE INDEX sitq_tasks_limited_ready
ON sitq_tasks (limit_key, queue, priority DESC, available_at)
WHERE status = 'queued' AND limit_key IS NOT NULL

-- name: v4_07_create_sitq_tasks_limited_running
CREATE INDEX sitq_tasks_limited_running ON sitq_tasks (limit_key)
WHERE status = 'running' AND limit_key IS NOT NULL

-- name: v4_08_create_sitq_paused
CREATE TABLE sitq_paused (queue TEXT PRIMARY KEY, paused_at REAL NOT NULL)

-- name: v4_09_create_sitq_limits
CREATE TABLE sitq_limits (
    key TEXT PRIMARY KEY,
    max_running INTEGER,
    max_starts INTEGER,
    per_seconds REAL
)

-- name: v4_10_create_sitq_limit_starts
-- Every start of a rate-limited task, kept for its limit's window: a
-- retry's start counts too (a task row only keeps its latest start).
CREATE TABLE sitq_limit_starts (key TEXT NOT NULL, started_at REAL NOT NULL)

-- name: v4_11_create_sitq_limit_starts_key
CREATE INDEX sitq_limit_starts_key ON sitq_limit_starts (key, started_at)

-- name: v4_12_create_sitq_schedules
CREATE TABLE sitq_schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    last_run_at REAL NOT NULL,
    next_run_at REAL,
    updated_at REAL NOT NULL
)

-- Version 5: workflow runs (sitq.workflow): a run, its steps and each step's items,
-- with status, result, error and attempts, so a killed run resumes from the
-- same database its tasks live in. Results are serialized by the layer above.

-- name: v5_01_create_sitq_workflow_runs
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

-- name: v5_02_create_sitq_workflow_runs_created
CREATE INDEX sitq_workflow_runs_created ON sitq_workflow_runs (created_at)

-- name: v5_03_create_sitq_workflow_steps
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

-- name: v5_04_create_sitq_workflow_items
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

-- Version 6: which tasks a dead worker had started (20.5): only those are charged an
-- attempt when their lease expires. See reclaim_expired in claim.sql.

-- name: v6_01_add_recorded_start
ALTER TABLE sitq_tasks ADD COLUMN recorded_start INTEGER NOT NULL DEFAULT 0

-- Version 7: the newest batches a page at a time (the dashboard), without sorting them all.

-- name: v7_01_create_sitq_batches_newest
CREATE INDEX sitq_batches_newest ON sitq_batches (created_at DESC, id)

-- Version 8: progress reported from inside a running task (sitq.current_task()):
-- the latest value, written by its worker at most every half second.

-- name: v8_01_add_progress_done
ALTER TABLE sitq_tasks ADD COLUMN progress_done REAL

-- name: v8_02_add_progress_total
ALTER TABLE sitq_tasks ADD COLUMN progress_total REAL

-- name: v8_03_add_progress_message
ALTER TABLE sitq_tasks ADD COLUMN progress_message TEXT

-- name: v8_04_add_progress_at
ALTER TABLE sitq_tasks ADD COLUMN progress_at REAL

-- Version 9: dependencies (a task that waits for others). A waiting task is 'queued'
-- with ``waiting`` parents left and ``available_at`` pushed WAITING_OFFSET (1e11 s,
-- base.WAITING_OFFSET) past its own time, so the claim, its query and its index
-- are unchanged: it is simply not due. ``has_children`` marks a task others wait
-- for: only such a task's final status runs the trigger below (plain tasks pay a
-- column test). ``parent_mode`` ('cancel' or 'run', NULL: no parents) is what a
-- dependent does when a parent fails; ``cancelled_by`` names the parent whose
-- failure cancelled it (directly or through others), so retrying that parent
-- brings it back, and a task its user cancelled stays cancelled.

-- name: v9_01_add_waiting
ALTER TABLE sitq_tasks ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0

-- name: v9_02_add_has_children
ALTER TABLE sitq_tasks ADD COLUMN has_children INTEGER NOT NULL DEFAULT 0

-- name: v9_03_add_parent_mode
ALTER TABLE sitq_tasks ADD COLUMN parent_mode TEXT

-- name: v9_04_add_cancelled_by
ALTER TABLE sitq_tasks ADD COLUMN cancelled_by TEXT

-- name: v9_05_create_sitq_dependencies
-- A child's parents in the order given (the order their results are passed in).
CREATE TABLE sitq_dependencies (
    child_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    parent_id TEXT NOT NULL,
    PRIMARY KEY (child_id, position)
) WITHOUT ROWID

-- name: v9_06_create_sitq_dependencies_parent
CREATE INDEX sitq_dependencies_parent ON sitq_dependencies (parent_id)

-- name: v9_07_create_sitq_tasks_cancelled_by
CREATE INDEX sitq_tasks_cancelled_by ON sitq_tasks (cancelled_by)
WHERE cancelled_by IS NOT NULL

-- name: v9_08_create_sitq_tasks_leave_dependencies
-- A dependent that is pruned or purged takes its dependency rows with it.
CREATE TRIGGER sitq_tasks_leave_dependencies AFTER DELETE ON sitq_tasks
WHEN OLD.parent_mode IS NOT NULL
BEGIN
    DELETE FROM sitq_dependencies WHERE child_id = OLD.id;
END

-- name: v9_09_create_sitq_tasks_settle_children
-- A parent's final status settles its dependents in the same transaction, whichever
-- statement wrote it (finish, a lost worker's reclaim, release, cancel). This one,
-- for a parent that succeeded, is the chord's path, run once per member: one
-- statement, each dependent counts the parent as done, and one with no parent left
-- becomes due (at its own time if that is later). A finish is refused once the
-- task is final, so a parent counts exactly once. It fires on finished_at, which
-- every statement that ends a task writes and the claim does not: the claim, the
-- busiest update, never runs it (and plain tasks pay only the WHEN's column test).
CREATE TRIGGER sitq_tasks_settle_children AFTER UPDATE OF finished_at ON sitq_tasks
WHEN NEW.has_children = 1 AND NEW.status = 'succeeded' AND OLD.status IN ('queued', 'running')
BEGIN
    UPDATE sitq_tasks
    SET waiting = waiting - 1,
        available_at = CASE WHEN waiting = 1 THEN max(available_at - 1e11, NEW.finished_at)
                            ELSE available_at END
    WHERE status = 'queued' AND waiting > 0
      AND id IN (SELECT d.child_id FROM sitq_dependencies d WHERE d.parent_id = NEW.id);
END

-- name: v9_10_create_sitq_tasks_cancel_children
-- A parent that failed or was cancelled:
--   1. cancels its waiting 'cancel' dependents, and theirs, transitively (one
--      recursive query, each marked cancelled_by the parent);
--   2. its 'run' dependents, and those of the tasks just cancelled, count them as
--      done, and one with no parent left becomes due.
-- SQLite runs no trigger from within itself (recursive_triggers stays off, as sitq
-- never turns it on), so the cascade is the query's, however deep.
CREATE TRIGGER sitq_tasks_cancel_children AFTER UPDATE OF finished_at ON sitq_tasks
WHEN NEW.has_children = 1 AND NEW.status IN ('failed', 'cancelled')
    AND OLD.status IN ('queued', 'running')
BEGIN
    UPDATE sitq_tasks
    SET status = 'cancelled', cancelled_by = NEW.id, finished_at = NEW.finished_at,
        expires_at = NEW.finished_at + COALESCE(result_ttl, NEW.expires_at - NEW.finished_at, 604800.0),
        error = 'ParentFailed: parent task ' || NEW.id || ' (' || NEW.func_name || ') ended '
            || NEW.status || ', and this task waited for it (on_parent_failure="cancel")'
    WHERE id IN (
        WITH RECURSIVE doomed(id) AS (
            SELECT NEW.id
            UNION
            SELECT d.child_id FROM doomed
            JOIN sitq_dependencies d ON d.parent_id = doomed.id
            JOIN sitq_tasks c ON c.id = d.child_id
            WHERE c.status = 'queued' AND c.waiting > 0 AND c.parent_mode = 'cancel')
        SELECT id FROM doomed WHERE id <> NEW.id);
    UPDATE sitq_tasks
    SET waiting = waiting - 1,
        available_at = CASE WHEN waiting = 1 THEN max(available_at - 1e11, NEW.finished_at)
                            ELSE available_at END
    WHERE status = 'queued' AND waiting > 0
      AND id IN (SELECT d.child_id FROM sitq_dependencies d WHERE d.parent_id = NEW.id);
    UPDATE sitq_tasks
    SET waiting = waiting - (
            SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks x ON x.id = d.parent_id
            WHERE d.child_id = sitq_tasks.id AND x.cancelled_by = NEW.id),
        available_at = CASE WHEN waiting = (
            SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks x ON x.id = d.parent_id
            WHERE d.child_id = sitq_tasks.id AND x.cancelled_by = NEW.id)
            THEN max(available_at - 1e11, NEW.finished_at) ELSE available_at END
    WHERE status = 'queued' AND waiting > 0 AND id IN (
        SELECT d.child_id FROM sitq_dependencies d
        WHERE d.parent_id IN (SELECT x.id FROM sitq_tasks x WHERE x.cancelled_by = NEW.id));
END

-- Version 10: purged parents. A parent deleted before it finished (`sitq purge
-- --status queued`) settles its dependents in the purge's transaction, as a parent
-- that ended without a result, and ``parent_purged`` marks its dependency rows: a
-- dependent that runs passes None for it, where a parent gone any other way (its
-- row deleted after it finished) is an error, ParentMissing. (PostgreSQL's version
-- 10 also moves its settling to a statement-level trigger; SQLite, one writer at a
-- time, keeps its row triggers.)

-- name: v10_01_add_parent_purged
ALTER TABLE sitq_dependencies ADD COLUMN parent_purged INTEGER NOT NULL DEFAULT 0

-- name: v10_02_create_sitq_tasks_settle_purged
-- sitq_tasks_cancel_children for a parent deleted while queued or running, at the
-- database's clock: its "cancel" dependents end cancelled (transitively) naming it,
-- its "run" ones (and those of the cancelled) count it as done. A dependent deleted
-- by the same statement is past help and needs none.
CREATE TRIGGER sitq_tasks_settle_purged AFTER DELETE ON sitq_tasks
WHEN OLD.has_children = 1 AND OLD.status IN ('queued', 'running')
BEGIN
    UPDATE sitq_dependencies SET parent_purged = 1 WHERE parent_id = OLD.id;
    UPDATE sitq_tasks
    SET status = 'cancelled', cancelled_by = OLD.id, finished_at = ((julianday('now') - 2440587.5) * 86400.0),
        expires_at = ((julianday('now') - 2440587.5) * 86400.0) + COALESCE(result_ttl, 604800.0),
        error = 'ParentFailed: parent task ' || OLD.id || ' (' || OLD.func_name
            || ') was purged before it finished (' || OLD.status
            || '), and this task waited for it (on_parent_failure="cancel")'
    WHERE id IN (
        WITH RECURSIVE doomed(id) AS (
            SELECT OLD.id
            UNION
            SELECT d.child_id FROM doomed
            JOIN sitq_dependencies d ON d.parent_id = doomed.id
            JOIN sitq_tasks c ON c.id = d.child_id
            WHERE c.status = 'queued' AND c.waiting > 0 AND c.parent_mode = 'cancel')
        SELECT id FROM doomed WHERE id <> OLD.id);
    UPDATE sitq_tasks
    SET waiting = waiting - 1,
        available_at = CASE WHEN waiting = 1 THEN max(available_at - 1e11, ((julianday('now') - 2440587.5) * 86400.0))
                            ELSE available_at END
    WHERE status = 'queued' AND waiting > 0
      AND id IN (SELECT d.child_id FROM sitq_dependencies d WHERE d.parent_id = OLD.id);
    UPDATE sitq_tasks
    SET waiting = waiting - (
            SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks x ON x.id = d.parent_id
            WHERE d.child_id = sitq_tasks.id AND x.cancelled_by = OLD.id),
        available_at = CASE WHEN waiting = (
            SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks x ON x.id = d.parent_id
            WHERE d.child_id = sitq_tasks.id AND x.cancelled_by = OLD.id)
            THEN max(available_at - 1e11, ((julianday('now') - 2440587.5) * 86400.0)) ELSE available_at END
    WHERE status = 'queued' AND waiting > 0 AND id IN (
        SELECT d.child_id FROM sitq_dependencies d
        WHERE d.parent_id IN (SELECT x.id FROM sitq_tasks x WHERE x.cancelled_by = OLD.id));
END

-- Version 11: finished tasks counted as they finish, not by a scan (issue 18, item
-- 4). A table keeps every finished task for its retention, so counting it per
-- status took about 0.5 s per million rows. sitq_finished holds, per whole second
-- of finished_at, queue and final status, how many tasks ended then, kept by the
-- triggers below whichever statement moves a task into or out of a final status
-- (finish, cancel, retry, release, reclaim, a dependency's cancel, purge, prune, a
-- borrowed connection's writes). Queued and running tasks are counted from their
-- partial indexes (as many entries as live tasks). The claim and the start never
-- run these triggers (they do not write finished_at); a finish runs one upsert.
-- No trigger on INSERT: any trigger there, even one whose WHEN is false, cost the
-- enqueue about a microsecond a row (a tenth of enqueue_many), and an enqueue only
-- ever inserts queued tasks. The one writer that inserts finished tasks, `sitq
-- migrate`, recounts after its copy (sitq/migrate/sql: recount_finished).
-- prune folds the seconds older than the horizon (common.FINISHED_HORIZON) into
-- second 0, so the table stays small and "finished since" reads the recent seconds
-- exactly. A decrement whose second was folded lands as a -1 row in that old
-- second: a sum over the table stays exact.

-- name: v11_01_create_sitq_finished
CREATE TABLE sitq_finished (
    second INTEGER NOT NULL,
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (second, queue, state)
) WITHOUT ROWID

-- name: v11_02_fill_sitq_finished
-- The tasks already finished; those of the last hour by their second.
INSERT INTO sitq_finished (second, queue, state, n)
SELECT CASE WHEN finished_at >= (julianday('now') - 2440587.5) * 86400.0 - 3600.0
            THEN CAST(finished_at AS INTEGER) ELSE 0 END AS second,
    queue, status, count(*)
FROM sitq_tasks
WHERE status IN ('succeeded', 'failed', 'cancelled')
GROUP BY second, queue, status

-- name: v11_03_create_sitq_tasks_count_end
-- A task that ends, or whose end changes, counts in its new second. The WHENs
-- compare one status at a time: an IN list there builds a lookup table on every
-- row (it tripled what these triggers cost a finish). Fires on
-- finished_at, which every statement that moves a task into or out of a final
-- status writes (as for sitq_tasks_settle_children) and the claim and the start
-- do not: they never run it.
CREATE TRIGGER sitq_tasks_count_end AFTER UPDATE OF finished_at ON sitq_tasks
WHEN NEW.status = 'succeeded' OR NEW.status = 'failed' OR NEW.status = 'cancelled'
BEGIN
    INSERT INTO sitq_finished (second, queue, state, n)
    VALUES (CAST(COALESCE(NEW.finished_at, 0) AS INTEGER), NEW.queue, NEW.status, 1)
    ON CONFLICT (second, queue, state) DO UPDATE SET n = n + 1;
END

-- name: v11_04_create_sitq_tasks_count_unend
-- A finished task that is retried, waits again or changes its end leaves its count.
CREATE TRIGGER sitq_tasks_count_unend AFTER UPDATE OF finished_at ON sitq_tasks
WHEN OLD.status = 'succeeded' OR OLD.status = 'failed' OR OLD.status = 'cancelled'
BEGIN
    INSERT INTO sitq_finished (second, queue, state, n)
    VALUES (CAST(COALESCE(OLD.finished_at, 0) AS INTEGER), OLD.queue, OLD.status, -1)
    ON CONFLICT (second, queue, state) DO UPDATE SET n = n - 1;
END

-- name: v11_05_create_sitq_tasks_count_delete
CREATE TRIGGER sitq_tasks_count_delete AFTER DELETE ON sitq_tasks
WHEN OLD.status = 'succeeded' OR OLD.status = 'failed' OR OLD.status = 'cancelled'
BEGIN
    INSERT INTO sitq_finished (second, queue, state, n)
    VALUES (CAST(COALESCE(OLD.finished_at, 0) AS INTEGER), OLD.queue, OLD.status, -1)
    ON CONFLICT (second, queue, state) DO UPDATE SET n = n - 1;
END

-- Version 12: no trigger work on a worker's finish (issue 18, item 1). SQLite runs
-- every row trigger on a table's UPDATE OF a column as a sub-program per row, even
-- when its WHEN is false: the four triggers on finished_at cost a finish about a
-- microsecond each per task, a fifth of the SQL of a claim and finish together.
-- One trigger now does their work, and it fires on a finish only for a parent
-- (has_children). A task's move out of 'running' is counted by the statement that
-- makes it (finish, finish_or_retry, release, reclaim_expired: the count_* queries
-- of claim.sql, in the same transaction); every other move by this trigger, as before.

-- name: v12_01_drop_sitq_tasks_settle_children
DROP TRIGGER sitq_tasks_settle_children

-- name: v12_02_drop_sitq_tasks_cancel_children
DROP TRIGGER sitq_tasks_cancel_children

-- name: v12_03_drop_sitq_tasks_count_end
DROP TRIGGER sitq_tasks_count_end

-- name: v12_04_drop_sitq_tasks_count_unend
DROP TRIGGER sitq_tasks_count_unend

-- name: v12_05_create_sitq_tasks_ended
-- What version 9's sitq_tasks_settle_children and sitq_tasks_cancel_children and
-- version 11's count triggers did, each statement guarded by its old WHEN:
--   1. a task that ends, changes its end or is brought back counts in sitq_finished
--      (only for moves from a status other than 'running');
--   2. a parent that succeeded settles its dependents (the chord's path);
--   3. a parent that failed or was cancelled cancels its waiting 'cancel'
--      dependents, and theirs, transitively (each marked cancelled_by the parent),
--      and its 'run' dependents, and those of the tasks just cancelled, count it as
--      done; one with no parent left becomes due.
-- It fires on finished_at, which every statement that moves a task into or out of
-- a final status writes and the claim and the start do not. The WHENs compare one
-- status at a time: an IN list there builds a lookup table on every row. SQLite
-- runs no trigger from within itself (recursive_triggers stays off): the cascade
-- is the query's, however deep, and so is the count of the tasks it cancels (the
-- old count triggers fired for them; this one, running, does not).
CREATE TRIGGER sitq_tasks_ended AFTER UPDATE OF finished_at ON sitq_tasks
WHEN OLD.status <> 'running' OR NEW.has_children = 1
BEGIN
    INSERT INTO sitq_finished (second, queue, state, n)
    SELECT CAST(COALESCE(NEW.finished_at, 0) AS INTEGER), NEW.queue, NEW.status, 1
    WHERE OLD.status <> 'running'
      AND (NEW.status = 'succeeded' OR NEW.status = 'failed' OR NEW.status = 'cancelled')
    ON CONFLICT (second, queue, state) DO UPDATE SET n = n + 1;
    INSERT INTO sitq_finished (second, queue, state, n)
    SELECT CAST(COALESCE(OLD.finished_at, 0) AS INTEGER), OLD.queue, OLD.status, -1
    WHERE OLD.status = 'succeeded' OR OLD.status = 'failed' OR OLD.status = 'cancelled'
    ON CONFLICT (second, queue, state) DO UPDATE SET n = n - 1;
    UPDATE sitq_tasks
    SET waiting = waiting - 1,
        available_at = CASE WHEN waiting = 1 THEN max(available_at - 1e11, NEW.finished_at)
                            ELSE available_at END
    WHERE NEW.has_children = 1 AND NEW.status = 'succeeded'
      AND (OLD.status = 'queued' OR OLD.status = 'running')
      AND status = 'queued' AND waiting > 0
      AND id IN (SELECT d.child_id FROM sitq_dependencies d WHERE d.parent_id = NEW.id);
    INSERT INTO sitq_finished (second, queue, state, n)
    SELECT CAST(COALESCE(NEW.finished_at, 0) AS INTEGER), c.queue, 'cancelled', count(*)
    FROM sitq_tasks c
    WHERE NEW.has_children = 1 AND (NEW.status = 'failed' OR NEW.status = 'cancelled')
      AND (OLD.status = 'queued' OR OLD.status = 'running')
      AND c.id IN (
        WITH RECURSIVE doomed(id) AS (
            SELECT NEW.id
            UNION
            SELECT d.child_id FROM doomed
            JOIN sitq_dependencies d ON d.parent_id = doomed.id
            JOIN sitq_tasks c ON c.id = d.child_id
            WHERE c.status = 'queued' AND c.waiting > 0 AND c.parent_mode = 'cancel')
        SELECT id FROM doomed WHERE id <> NEW.id)
    GROUP BY c.queue
    ON CONFLICT (second, queue, state) DO UPDATE SET n = n + excluded.n;
    UPDATE sitq_tasks
    SET status = 'cancelled', cancelled_by = NEW.id, finished_at = NEW.finished_at,
        expires_at = NEW.finished_at + COALESCE(result_ttl, NEW.expires_at - NEW.finished_at, 604800.0),
        error = 'ParentFailed: parent task ' || NEW.id || ' (' || NEW.func_name || ') ended '
            || NEW.status || ', and this task waited for it (on_parent_failure="cancel")'
    WHERE NEW.has_children = 1 AND (NEW.status = 'failed' OR NEW.status = 'cancelled')
      AND (OLD.status = 'queued' OR OLD.status = 'running')
      AND id IN (
        WITH RECURSIVE doomed(id) AS (
            SELECT NEW.id
            UNION
            SELECT d.child_id FROM doomed
            JOIN sitq_dependencies d ON d.parent_id = doomed.id
            JOIN sitq_tasks c ON c.id = d.child_id
            WHERE c.status = 'queued' AND c.waiting > 0 AND c.parent_mode = 'cancel')
        SELECT id FROM doomed WHERE id <> NEW.id);
    UPDATE sitq_tasks
    SET waiting = waiting - 1,
        available_at = CASE WHEN waiting = 1 THEN max(available_at - 1e11, NEW.finished_at)
                            ELSE available_at END
    WHERE NEW.has_children = 1 AND (NEW.status = 'failed' OR NEW.status = 'cancelled')
      AND (OLD.status = 'queued' OR OLD.status = 'running')
      AND status = 'queued' AND waiting > 0
      AND id IN (SELECT d.child_id FROM sitq_dependencies d WHERE d.parent_id = NEW.id);
    UPDATE sitq_tasks
    SET waiting = waiting - (
            SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks x ON x.id = d.parent_id
            WHERE d.child_id = sitq_tasks.id AND x.cancelled_by = NEW.id),
        available_at = CASE WHEN waiting = (
            SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks x ON x.id = d.parent_id
            WHERE d.child_id = sitq_tasks.id AND x.cancelled_by = NEW.id)
            THEN max(available_at - 1e11, NEW.finished_at) ELSE available_at END
    WHERE NEW.has_children = 1 AND (NEW.status = 'failed' OR NEW.status = 'cancelled')
      AND (OLD.status = 'queued' OR OLD.status = 'running')
      AND status = 'queued' AND waiting > 0 AND id IN (
        SELECT d.child_id FROM sitq_dependencies d
        WHERE d.parent_id IN (SELECT x.id FROM sitq_tasks x WHERE x.cancelled_by = NEW.id));
END

-- Version 13: integer task ids. A file whose tasks are kept by their integer row
-- id (the public id is its decimal string) has no separate index on a text id:
-- an insert changes two B-trees, not three. The counter below hands each producer
-- a block of ids (reserve_task_ids in tasks.sql); it starts at a random point
-- above 2**32 so that two files' ids do not meet (sitq migrate merges files).
-- Only a new file's tables are rebuilt with integer ids (sitq.backends.sqlite.layout):
-- a file an older sitq made keeps text ids, which its processes may still write.

-- name: v13_01_start_task_ids
INSERT OR IGNORE INTO sitq_meta (key, value)
VALUES ('next_task_id', CAST(4294967296 + (random() & 4503599627370495) AS TEXT))

-- Not a migration: the statements sitq.backends.sqlite.layout runs.

-- name: tasks_tables
-- The tables whose columns name a task, with what goes with them: the order to
-- drop and create them in, then their indexes and triggers.
SELECT type, name, tbl_name, sql FROM sqlite_master
WHERE tbl_name IN ('sitq_tasks', 'sitq_dependencies', 'sitq_batch_tasks') AND sql IS NOT NULL
ORDER BY type <> 'table', rowid

-- name: tasks_tables_empty
SELECT NOT EXISTS (SELECT 1 FROM sitq_tasks)
    AND NOT EXISTS (SELECT 1 FROM sitq_dependencies)
    AND NOT EXISTS (SELECT 1 FROM sitq_batch_tasks)

-- name: task_id_column_type
SELECT type FROM pragma_table_info('sitq_tasks') WHERE name = 'id'
