-- The schema: its versions (DDL and data migrations) and the sitq_meta
-- queries that track them.
--
-- A query named vN_MM_label is statement MM of the migration to version N:
-- schema.MIGRATIONS runs them in that order. A released migration never
-- changes: add a version instead (and raise schema.SCHEMA_VERSION).

-- name: lock_migrations
-- One migrator at a time (a transaction-scoped advisory lock).
SELECT pg_advisory_xact_lock($1)

-- name: has_meta_table
-- $1: the sitq_meta table's qualified name.
SELECT to_regclass($1) IS NOT NULL

-- name: read_schema_version
SELECT value FROM {s}.sitq_meta WHERE key = 'schema_version'

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS {s}

-- name: write_schema_version
INSERT INTO {s}.sitq_meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value

-- Version 1: tasks and workers.

-- name: v1_01_create_sitq_meta
CREATE TABLE IF NOT EXISTS {s}.sitq_meta (key text PRIMARY KEY, value text NOT NULL)

-- name: v1_02_create_sitq_tasks
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

-- name: v1_03_create_sitq_tasks_ready
-- Serves the claim: ready tasks of a queue in priority, time, enqueue order.
CREATE INDEX sitq_tasks_ready ON {s}.sitq_tasks (queue, priority DESC, available_at, seq)
WHERE status = 'queued'

-- name: v1_04_create_sitq_tasks_running
CREATE INDEX sitq_tasks_running ON {s}.sitq_tasks (lease_expires_at)
WHERE status = 'running'

-- name: v1_05_create_sitq_tasks_expiry
CREATE INDEX sitq_tasks_expiry ON {s}.sitq_tasks (expires_at)
WHERE expires_at IS NOT NULL

-- name: v1_06_create_sitq_workers
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

-- Version 2: named batches: which tasks belong to a batch, in input order. ``size``
-- counts every task ever added, so tasks pruned since show up as missing.
-- A pruned or purged task leaves its batches (cascade); deleting a batch
-- deletes its membership, never its tasks.

-- name: v2_01_create_sitq_batches
CREATE TABLE {s}.sitq_batches (
    id text PRIMARY KEY,
    created_at double precision NOT NULL,
    size integer NOT NULL DEFAULT 0
)

-- name: v2_02_create_sitq_batch_tasks
CREATE TABLE {s}.sitq_batch_tasks (
    batch_id text NOT NULL REFERENCES {s}.sitq_batches (id) ON DELETE CASCADE,
    position integer NOT NULL,
    task_id text NOT NULL REFERENCES {s}.sitq_tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (batch_id, position)
)

-- name: v2_03_create_sitq_batch_tasks_task
CREATE INDEX sitq_batch_tasks_task ON {s}.sitq_batch_tasks (task_id)

-- Version 3: the latest failures for `sitq status`, from a partial index only failed
-- rows enter (so the drain path pays nothing for it).

-- name: v3_01_create_sitq_tasks_failed
CREATE INDEX sitq_tasks_failed ON {s}.sitq_tasks (finished_at)
WHERE status = 'failed'

-- Version 4: unique jobs, limits, paused queues and schedules.

-- name: v4_01_add_limit_key
ALTER TABLE {s}.sitq_tasks ADD COLUMN limit_key text

-- name: v4_02_dedupe_unique_keys
-- unique_key was stored but not enforced before: keep the oldest holder
-- of a key among live tasks, so the unique index can be built.
UPDATE {s}.sitq_tasks SET unique_key = NULL
WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
  AND seq NOT IN (
    SELECT min(seq) FROM {s}.sitq_tasks
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')
    GROUP BY unique_key)

-- name: v4_03_create_sitq_tasks_unique
-- At most one queued or running task per unique key.
CREATE UNIQUE INDEX sitq_tasks_unique ON {s}.sitq_tasks (unique_key)
WHERE unique_key IS NOT NULL AND status IN ('queued', 'running')

-- name: v4_04_drop_sitq_tasks_ready
-- Tasks under a limit are claimed apart, by key: the main claim's index
-- leaves them out, so a backlog held back by its limit costs it nothing.
DROP INDEX {s}.sitq_tasks_ready

-- name: v4_05_create_sitq_tasks_ready
CREATE INDEX sitq_tasks_ready ON {s}.sitq_tasks (queue, priority DESC, available_at, seq)
WHERE status = 'queued' AND limit_key IS NULL

-- name: v4_06_create_sitq_tasks_limited_ready
CREATE INDEX sitq_tasks_limited_ready
ON {s}.sitq_tasks (limit_key, queue, priority DESC, available_at, seq)
WHERE status = 'queued' AND limit_key IS NOT NULL

-- name: v4_07_create_sitq_tasks_limited_running
CREATE INDEX sitq_tasks_limited_running ON {s}.sitq_tasks (limit_key)
WHERE status = 'running' AND limit_key IS NOT NULL

-- name: v4_08_create_sitq_paused
CREATE TABLE {s}.sitq_paused (
    queue text PRIMARY KEY, paused_at double precision NOT NULL
)

-- name: v4_09_create_sitq_limits
CREATE TABLE {s}.sitq_limits (
    key text PRIMARY KEY,
    max_running integer,
    max_starts integer,
    per_seconds double precision
)

-- name: v4_10_create_sitq_limit_starts
-- Every start of a rate-limited task, in the database's clock (hosts'
-- clocks differ), kept for its limit's window.
CREATE TABLE {s}.sitq_limit_starts (
    key text NOT NULL, started_at double precision NOT NULL
)

-- name: v4_11_create_sitq_limit_starts_key
CREATE INDEX sitq_limit_starts_key ON {s}.sitq_limit_starts (key, started_at)

-- name: v4_12_create_sitq_schedules
CREATE TABLE {s}.sitq_schedules (
    name text PRIMARY KEY,
    spec text NOT NULL,
    last_run_at double precision NOT NULL,
    next_run_at double precision,
    updated_at double precision NOT NULL
)

-- Version 5: workflow runs (sitq.workflow): a run, its steps and each step's items,
-- with status, result, error and attempts, so a killed run resumes from the
-- same database its tasks live in. Results are serialized by the layer above.

-- name: v5_01_create_sitq_workflow_runs
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

-- name: v5_02_create_sitq_workflow_runs_created
CREATE INDEX sitq_workflow_runs_created ON {s}.sitq_workflow_runs (created_at)

-- name: v5_03_create_sitq_workflow_steps
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

-- name: v5_04_create_sitq_workflow_items
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

-- Version 6: which tasks a dead worker had started (20.5): only those are charged an
-- attempt when their lease expires. See reclaim_expired in claim.sql.

-- name: v6_01_add_recorded_start
ALTER TABLE {s}.sitq_tasks ADD COLUMN recorded_start integer NOT NULL DEFAULT 0

-- Version 7: the newest batches a page at a time (the dashboard), without sorting them all.

-- name: v7_01_create_sitq_batches_newest
CREATE INDEX sitq_batches_newest ON {s}.sitq_batches (created_at DESC, id)

-- Version 8: progress reported from inside a running task (sitq.current_task()):
-- the latest value, written by its worker at most every half second.

-- name: v8_01_add_progress_done
ALTER TABLE {s}.sitq_tasks ADD COLUMN progress_done double precision

-- name: v8_02_add_progress_total
ALTER TABLE {s}.sitq_tasks ADD COLUMN progress_total double precision

-- name: v8_03_add_progress_message
ALTER TABLE {s}.sitq_tasks ADD COLUMN progress_message text

-- name: v8_04_add_progress_at
ALTER TABLE {s}.sitq_tasks ADD COLUMN progress_at double precision

-- Version 9: dependencies (a task that waits for others); see the SQLite schema for
-- the columns. A waiting task is 'queued' with available_at pushed 1e11 s
-- (base.WAITING_OFFSET) past its own time, so the claim is unchanged.

-- name: v9_01_add_waiting
ALTER TABLE {s}.sitq_tasks ADD COLUMN waiting integer NOT NULL DEFAULT 0

-- name: v9_02_add_has_children
ALTER TABLE {s}.sitq_tasks ADD COLUMN has_children boolean NOT NULL DEFAULT false

-- name: v9_03_add_parent_mode
ALTER TABLE {s}.sitq_tasks ADD COLUMN parent_mode text

-- name: v9_04_add_cancelled_by
ALTER TABLE {s}.sitq_tasks ADD COLUMN cancelled_by text

-- name: v9_05_create_sitq_dependencies
CREATE TABLE {s}.sitq_dependencies (
    child_id text NOT NULL,
    position integer NOT NULL,
    parent_id text NOT NULL,
    PRIMARY KEY (child_id, position)
)

-- name: v9_06_create_sitq_dependencies_parent
CREATE INDEX sitq_dependencies_parent ON {s}.sitq_dependencies (parent_id)

-- name: v9_07_create_sitq_tasks_cancelled_by
CREATE INDEX sitq_tasks_cancelled_by ON {s}.sitq_tasks (cancelled_by)
WHERE cancelled_by IS NOT NULL

-- name: v9_08_create_leave_dependencies
CREATE FUNCTION {s}.sitq_leave_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {s}.sitq_dependencies WHERE child_id = OLD.id;
    RETURN NULL;
END
$$

-- name: v9_09_create_sitq_tasks_leave_dependencies
CREATE TRIGGER sitq_tasks_leave_dependencies AFTER DELETE ON {s}.sitq_tasks
FOR EACH ROW WHEN (OLD.parent_mode IS NOT NULL)
EXECUTE FUNCTION {s}.sitq_leave_dependencies()

-- name: v9_10_create_settle_children
-- What the SQLite triggers do (see there). A parent that succeeded (a chord's
-- member) costs one statement: its direct dependents locked in id order (two
-- parents finishing at once never deadlock on them), counted down, and the workers
-- woken (NOTIFY 'tasks', at commit) when one becomes due.
CREATE FUNCTION {s}.sitq_settle_children() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    due bigint;
BEGIN
    IF NEW.status <> 'succeeded' THEN
        PERFORM 1 FROM {s}.sitq_tasks
        WHERE id IN (SELECT d.child_id FROM {s}.sitq_dependencies d WHERE d.parent_id = NEW.id)
        ORDER BY id FOR UPDATE;
        UPDATE {s}.sitq_tasks
        SET status = 'cancelled', cancelled_by = NEW.id, finished_at = NEW.finished_at,
            expires_at = NEW.finished_at
                + COALESCE(result_ttl, NEW.expires_at - NEW.finished_at, 604800.0),
            error = 'ParentFailed: parent task ' || NEW.id || ' (' || NEW.func_name || ') ended '
                || NEW.status || ', and this task waited for it (on_parent_failure="cancel")'
        WHERE id IN (
            WITH RECURSIVE doomed(id) AS (
                SELECT NEW.id
                UNION
                SELECT d.child_id FROM doomed
                JOIN {s}.sitq_dependencies d ON d.parent_id = doomed.id
                JOIN {s}.sitq_tasks c ON c.id = d.child_id
                WHERE c.status = 'queued' AND c.waiting > 0 AND c.parent_mode = 'cancel')
            SELECT doomed.id FROM doomed WHERE doomed.id <> NEW.id);
    END IF;
    WITH locked AS (
        SELECT id FROM {s}.sitq_tasks
        WHERE id IN (SELECT d.child_id FROM {s}.sitq_dependencies d WHERE d.parent_id = NEW.id)
        ORDER BY id FOR UPDATE
    ), settled AS (
        UPDATE {s}.sitq_tasks t
        SET waiting = t.waiting - 1,
            available_at = CASE WHEN t.waiting = 1
                THEN GREATEST(t.available_at - 1e11, NEW.finished_at) ELSE t.available_at END
        FROM locked
        WHERE t.id = locked.id AND t.status = 'queued' AND t.waiting > 0
        RETURNING t.waiting
    )
    SELECT count(*) INTO due FROM settled WHERE settled.waiting = 0;
    IF NEW.status <> 'succeeded' THEN
        UPDATE {s}.sitq_tasks t
        SET waiting = t.waiting - n.parents,
            available_at = CASE WHEN t.waiting = n.parents
                THEN GREATEST(t.available_at - 1e11, NEW.finished_at) ELSE t.available_at END
        FROM (SELECT d.child_id, count(*) AS parents FROM {s}.sitq_dependencies d
              JOIN {s}.sitq_tasks x ON x.id = d.parent_id
              WHERE x.cancelled_by = NEW.id GROUP BY d.child_id) AS n
        WHERE t.id = n.child_id AND t.status = 'queued' AND t.waiting > 0;
        due := due + 1;  -- a hint: the "run" dependents of those cancelled may be due
    END IF;
    IF due > 0 THEN
        PERFORM pg_notify('sitq_' || TG_TABLE_SCHEMA, 'tasks');
    END IF;
    RETURN NULL;
END
$$

-- name: v9_11_create_sitq_tasks_settle_children
-- Fired for the statement's own rows only (depth 0): the function's cascade is
-- one recursive query, however deep, never a trigger within a trigger.
CREATE TRIGGER sitq_tasks_settle_children AFTER UPDATE OF finished_at ON {s}.sitq_tasks
FOR EACH ROW WHEN (NEW.has_children AND NEW.status IN ('succeeded', 'failed', 'cancelled')
    AND OLD.status IN ('queued', 'running') AND pg_trigger_depth() < 1)
EXECUTE FUNCTION {s}.sitq_settle_children()

-- Version 10: the settling of dependents, once per statement; purged parents.
--
-- A parent's end settled its dependents from a row trigger, which locked each
-- parent's dependents as the ending statement came to its row: two workers' batched
-- finishes of members of the same chords took the callbacks in opposite orders and
-- deadlocked. Now a statement-level trigger settles every dependent of the
-- statement's ended parents at once, locking them in id order (and the finish locks
-- its own rows in id order first, see finish in claim.sql). A parent purged
-- (deleted) before it finished settles its dependents the same way, as a parent
-- that ended without a result, and ``parent_purged`` marks its dependency rows: a
-- dependent that runs passes None for it, where a parent gone any other way (its
-- row deleted after it finished) is an error, ParentMissing.

-- name: v10_01_add_parent_purged
ALTER TABLE {s}.sitq_dependencies ADD COLUMN parent_purged boolean NOT NULL DEFAULT false

-- name: v10_02_drop_sitq_tasks_settle_children
DROP TRIGGER sitq_tasks_settle_children ON {s}.sitq_tasks

-- name: v10_03_drop_settle_children
DROP FUNCTION {s}.sitq_settle_children()

-- name: v10_04_create_settle_parents
-- Settle the dependents of the ended parents given (one array per column: id, task
-- name, how it ended for the error text, when, its result ttl, whether it
-- succeeded), in a few statements however many they are:
--   1. those that did not succeed cancel their waiting "cancel" dependents,
--      transitively (each marked cancelled_by its root), having locked every task
--      this step and the next change, in id order;
--   2. the waiting dependents of them all, and of the tasks just cancelled, locked
--      in id order, count them as done; one with none left becomes due (at its own
--      time if that is later).
-- Returns whether one may be due now (the trigger then wakes the workers). Each
-- statement looks its rows up by key, one parent at a time (a LATERAL join per
-- array element, OFFSET 0 keeping it apart): planned for any number of parents,
-- and on a table without statistics yet, `parent_id = ANY(array)` or a plain join
-- was planned as a scan of every dependency row.
CREATE FUNCTION {s}.sitq_settle_parents(
    ids text[], funcs text[], ends text[], ats float8[], ttls float8[], ok boolean[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    failed text[];
    doomed text[];
    settled text[];
    children text[];
    counts bigint[];
    latest float8;
    due bigint;
BEGIN
    SELECT array_agg(r.id ORDER BY r.id) FILTER (WHERE NOT r.ok), max(r.at)
    INTO failed, latest
    FROM unnest(ids, ats, ok) AS r(id, at, ok);
    settled := ids;
    IF failed IS NOT NULL THEN
        -- What the cancel reaches, transitively (one recursive query).
        WITH RECURSIVE reached(id) AS (
            SELECT unnest(failed)
            UNION
            SELECT c.id FROM reached
            CROSS JOIN LATERAL (SELECT x.child_id FROM {s}.sitq_dependencies x
                                WHERE x.parent_id = reached.id OFFSET 0) AS d
            CROSS JOIN LATERAL (SELECT y.id FROM {s}.sitq_tasks y
                                WHERE y.id = d.child_id AND y.status = 'queued'
                                  AND y.waiting > 0 AND y.parent_mode = 'cancel'
                                OFFSET 0) AS c
        )
        SELECT COALESCE(array_agg(reached.id), '{}') INTO doomed
        FROM reached WHERE reached.id <> ALL(failed);
        -- Everything the two steps change, locked at once in id order.
        PERFORM 1 FROM {s}.sitq_tasks
        WHERE id IN (SELECT d.child_id FROM unnest(ids || doomed) AS p(id)
                     CROSS JOIN LATERAL (SELECT x.child_id FROM {s}.sitq_dependencies x
                                         WHERE x.parent_id = p.id OFFSET 0) AS d)
          AND status = 'queued' AND waiting > 0
        ORDER BY id FOR UPDATE;
        WITH RECURSIVE roots AS (
            SELECT * FROM unnest(ids, funcs, ends, ats, ttls, ok)
                AS r(id, func_name, how, at, ttl, ok)
            WHERE NOT r.ok
        ), reached(id, root) AS (
            SELECT roots.id, roots.id FROM roots
            UNION
            SELECT d.child_id, reached.root FROM reached
            CROSS JOIN LATERAL (SELECT x.child_id FROM {s}.sitq_dependencies x
                                WHERE x.parent_id = reached.id OFFSET 0) AS d
            WHERE d.child_id = ANY(doomed)
        ), chosen AS (  -- reached from several roots: the first by id names it
            SELECT DISTINCT ON (reached.id) reached.id AS task_id, roots.id AS root_id,
                roots.func_name, roots.how, roots.at, roots.ttl
            FROM reached JOIN roots ON roots.id = reached.root
            WHERE reached.id <> ALL(failed)
            ORDER BY reached.id, roots.id
        )
        UPDATE {s}.sitq_tasks t
        SET status = 'cancelled', cancelled_by = chosen.root_id, finished_at = chosen.at,
            expires_at = chosen.at + COALESCE(t.result_ttl, chosen.ttl, 604800.0),
            error = 'ParentFailed: parent task ' || chosen.root_id || ' (' || chosen.func_name
                || ') ' || chosen.how
                || ', and this task waited for it (on_parent_failure="cancel")'
        FROM chosen
        WHERE t.id = chosen.task_id AND t.id = ANY(doomed) AND t.status = 'queued';
        -- Their "run" dependents count them as done too (and those cancelled by the
        -- same roots before, as the trigger always did).
        SELECT settled || array_agg(x.id) INTO settled FROM {s}.sitq_tasks x
        WHERE x.cancelled_by = ANY(failed) AND x.status = 'cancelled' AND x.id <> ALL(ids);
    END IF;
    SELECT array_agg(n.child_id ORDER BY n.child_id), array_agg(n.parents ORDER BY n.child_id)
    INTO children, counts
    FROM (SELECT d.child_id, count(*) AS parents FROM unnest(settled) AS p(id)
          CROSS JOIN LATERAL (SELECT x.child_id FROM {s}.sitq_dependencies x
                              WHERE x.parent_id = p.id OFFSET 0) AS d
          GROUP BY d.child_id) AS n;
    IF children IS NULL THEN
        RETURN false;
    END IF;
    WITH locked AS (
        SELECT t.id FROM {s}.sitq_tasks t
        WHERE t.id = ANY(children) AND t.status = 'queued' AND t.waiting > 0
        ORDER BY t.id FOR UPDATE
    ), changed AS (
        UPDATE {s}.sitq_tasks t
        SET waiting = t.waiting - n.parents,
            available_at = CASE WHEN t.waiting <= n.parents
                THEN GREATEST(t.available_at - 1e11, latest) ELSE t.available_at END
        FROM locked JOIN unnest(children, counts) AS n(id, parents) ON n.id = locked.id
        WHERE t.id = locked.id AND t.id = ANY(children)
            AND t.status = 'queued' AND t.waiting > 0
        RETURNING t.waiting
    )
    SELECT count(*) INTO due FROM changed WHERE changed.waiting <= 0;
    RETURN due > 0;
END
$$

-- name: v10_05_create_settle_ended
-- The statement's rows that ended (final now, unfinished before) and that others
-- wait for: their dependents settled (sitq_settle_parents). Fired for every update
-- (a trigger with transition tables cannot name columns), so a statement with no
-- such row costs one scan of its new rows. Only the statement's own rows (depth
-- 1): the cascade is sitq_settle_parents', never a trigger within a trigger.
CREATE FUNCTION {s}.sitq_settle_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text[]; funcs text[]; ends text[]; ats float8[]; ttls float8[]; ok boolean[];
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(n.id), array_agg(n.func_name), array_agg('ended ' || n.status),
           array_agg(n.finished_at), array_agg(n.expires_at - n.finished_at),
           array_agg(n.status = 'succeeded')
    INTO ids, funcs, ends, ats, ttls, ok
    FROM new_rows n
    WHERE n.has_children AND n.status IN ('succeeded', 'failed', 'cancelled')
      AND EXISTS (SELECT 1 FROM old_rows o WHERE o.id = n.id AND o.status IN ('queued', 'running'));
    IF ids IS NOT NULL AND {s}.sitq_settle_parents(ids, funcs, ends, ats, ttls, ok) THEN
        PERFORM pg_notify('sitq_' || TG_TABLE_SCHEMA, 'tasks');  -- delivered at commit
    END IF;
    RETURN NULL;
END
$$

-- name: v10_06_create_sitq_tasks_settle_ended
CREATE TRIGGER sitq_tasks_settle_ended AFTER UPDATE ON {s}.sitq_tasks
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION {s}.sitq_settle_ended()

-- name: v10_07_create_settle_purged
-- The statement deleted parents that had not finished (a purge of queued or
-- running tasks): their dependency rows are marked, and their dependents settled
-- as for a parent that ended without a result, now (the database's clock).
CREATE FUNCTION {s}.sitq_settle_purged() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text[]; funcs text[]; ends text[]; ats float8[]; ttls float8[]; ok boolean[];
BEGIN
    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(o.id), array_agg(o.func_name),
           array_agg('was purged before it finished (' || o.status || ')'),
           array_agg(extract(epoch FROM clock_timestamp())::float8),
           array_agg(NULL::float8), array_agg(false)
    INTO ids, funcs, ends, ats, ttls, ok
    FROM old_rows o
    WHERE o.has_children AND o.status IN ('queued', 'running');
    IF ids IS NOT NULL THEN
        UPDATE {s}.sitq_dependencies SET parent_purged = true WHERE parent_id = ANY(ids);
        IF {s}.sitq_settle_parents(ids, funcs, ends, ats, ttls, ok) THEN
            PERFORM pg_notify('sitq_' || TG_TABLE_SCHEMA, 'tasks');
        END IF;
    END IF;
    RETURN NULL;
END
$$

-- name: v10_08_create_sitq_tasks_settle_purged
CREATE TRIGGER sitq_tasks_settle_purged AFTER DELETE ON {s}.sitq_tasks
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION {s}.sitq_settle_purged()

-- Version 11: finished tasks counted as they finish, not by a scan (issue 18, item
-- 4; SQLite's version 11 says why). Here sitq_finished holds changes, not totals:
-- each statement that moves tasks into or out of a final status (finish, cancel,
-- retry, release, reclaim, a dependency's cancel, purge, prune, a borrowed
-- connection's or `sitq migrate`'s writes) adds one row per second of finished_at,
-- queue and status it changed, from its transition tables. Rows are only ever
-- inserted by the writers, so concurrent workers never wait on a shared counter
-- row; a read sums them, and prune folds them (one row per second, queue and
-- status; the seconds older than the horizon into second 0). As on SQLite, no
-- trigger on INSERT: capturing an enqueue_many's rows for one cost it a fifth of
-- its rate, and an enqueue only inserts queued tasks; `sitq migrate` recounts
-- after its copy.

-- name: v11_01_create_sitq_finished
CREATE TABLE {s}.sitq_finished (
    second bigint NOT NULL,
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
)

-- name: v11_02_create_sitq_finished_second
CREATE INDEX sitq_finished_second ON {s}.sitq_finished (second)

-- name: v11_03_fill_sitq_finished
-- The tasks already finished; those of the last hour by their second.
INSERT INTO {s}.sitq_finished (second, queue, state, n)
SELECT CASE WHEN finished_at >= extract(epoch FROM clock_timestamp()) - 3600.0
            THEN floor(finished_at)::bigint ELSE 0 END, queue, status, count(*)
FROM {s}.sitq_tasks
WHERE status IN ('succeeded', 'failed', 'cancelled')
GROUP BY 1, 2, 3

-- name: v11_04_create_count_finished
-- The statement's changes to the finished tasks, summed: one row each per second,
-- queue and status whose count changed. Counts at every trigger depth (the
-- settling's cancels of dependents too). A statement that touches no finished
-- task (a claim, a start, a heartbeat) inserts nothing, after one look at its rows.
CREATE FUNCTION {s}.sitq_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {s}.sitq_finished (second, queue, state, n)
        SELECT floor(COALESCE(r.finished_at, 0))::bigint, r.queue, r.status, -count(*)
        FROM old_rows r WHERE r.status IN ('succeeded', 'failed', 'cancelled')
        GROUP BY 1, 2, 3;
    ELSIF EXISTS (SELECT 1 FROM new_rows r WHERE r.status IN ('succeeded', 'failed', 'cancelled'))
       OR EXISTS (SELECT 1 FROM old_rows r WHERE r.status IN ('succeeded', 'failed', 'cancelled'))
    THEN
        INSERT INTO {s}.sitq_finished (second, queue, state, n)
        SELECT c.second, c.queue, c.state, sum(c.n)
        FROM (SELECT floor(COALESCE(r.finished_at, 0))::bigint AS second, r.queue,
                     r.status AS state, 1 AS n
              FROM new_rows r WHERE r.status IN ('succeeded', 'failed', 'cancelled')
              UNION ALL
              SELECT floor(COALESCE(r.finished_at, 0))::bigint, r.queue, r.status, -1
              FROM old_rows r WHERE r.status IN ('succeeded', 'failed', 'cancelled')) AS c
        GROUP BY 1, 2, 3 HAVING sum(c.n) <> 0;
    END IF;
    RETURN NULL;
END
$$

-- name: v11_05_create_sitq_tasks_count_update
CREATE TRIGGER sitq_tasks_count_update AFTER UPDATE ON {s}.sitq_tasks
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION {s}.sitq_count_finished()

-- name: v11_06_create_sitq_tasks_count_delete
CREATE TRIGGER sitq_tasks_count_delete AFTER DELETE ON {s}.sitq_tasks
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION {s}.sitq_count_finished()
