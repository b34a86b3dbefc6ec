-- Dependencies: tasks that wait for others (schema version 9, 10; the settling of a
-- parent's dependents is the trigger sitq_tasks_settle_ended, in schema.sql).

-- name: lock_parents
-- The stored parents of a new dependent, locked in id order (a finish of one waits
-- for this transaction, and sees its dependents) and marked as having children.
WITH locked AS (
    SELECT id FROM {s}.sitq_tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
)
UPDATE {s}.sitq_tasks t SET has_children = true
FROM locked WHERE t.id = locked.id
RETURNING t.id, t.status, t.cancelled_by, t.func_name

-- name: mark_dependents
-- New tasks' dependency state, one array per column; $7 now, $8 the ttl.
UPDATE {s}.sitq_tasks t
SET waiting = m.waiting, parent_mode = m.mode, has_children = m.has_children <> 0,
    cancelled_by = m.cancelled_by,
    status = CASE WHEN m.cancelled_by IS NULL THEN t.status ELSE 'cancelled' END,
    error = m.error,
    finished_at = CASE WHEN m.cancelled_by IS NULL THEN NULL ELSE $7::float8 END,
    expires_at = CASE WHEN m.cancelled_by IS NULL THEN NULL
                      ELSE $7::float8 + COALESCE(t.result_ttl, $8::float8) END
FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[])
    AS m(id, waiting, mode, has_children, cancelled_by, error)
WHERE t.id = m.id

-- name: insert_dependencies
INSERT INTO {s}.sitq_dependencies (child_id, position, parent_id)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[])

-- name: task_parents
SELECT parent_id FROM {s}.sitq_dependencies WHERE child_id = $1 ORDER BY position

-- name: task_parent_results
-- A dependent's parents' outcomes, one row per parent in its order (the result only
-- if it succeeded); a parent whose row is gone has the status 'purged' (deleted
-- before it finished, so it ended without a result) or 'missing' (deleted since).
SELECT d.parent_id, COALESCE(t.func_name, ''),
       CASE WHEN t.id IS NOT NULL THEN t.status
            WHEN d.parent_purged THEN 'purged' ELSE 'missing' END,
       CASE WHEN t.status = 'succeeded' THEN t.result END
FROM {s}.sitq_dependencies d LEFT JOIN {s}.sitq_tasks t ON t.id = d.parent_id
WHERE d.child_id = $1 ORDER BY d.position

-- name: task_children
SELECT child_id FROM {s}.sitq_dependencies WHERE parent_id = $1 ORDER BY child_id

-- name: task_wait_state
SELECT waiting, parent_mode, cancelled_by FROM {s}.sitq_tasks WHERE id = $1

-- name: retry_family
-- See the SQLite query. $1 the retried ids.
WITH RECURSIVE family(id, expand) AS (
    SELECT * FROM (
        SELECT unnest($1::text[]), true
        UNION
        SELECT id, true FROM {s}.sitq_tasks
        WHERE cancelled_by = ANY($1::text[]) AND status = 'cancelled'
    ) seeds
    UNION
    SELECT c.id, c.status = 'cancelled'
    FROM family f
    JOIN {s}.sitq_dependencies d ON d.parent_id = f.id
    JOIN {s}.sitq_tasks c ON c.id = d.child_id
    WHERE f.expand AND (c.status = 'queued' OR (
        c.status = 'cancelled' AND c.cancelled_by = ANY($1::text[])))
)
SELECT DISTINCT id FROM family ORDER BY id

-- name: lock_tasks
-- The tasks $1 and their parents, in id order (the order in which a parent's
-- finish locks its dependents: ids grow with time, a parent's before its
-- dependents'). A parent's finish in flight holds its row: waiting for it here
-- means the statements after this one see that finish (READ COMMITTED), and one
-- that comes later waits for the retry and then sees what it wrote.
SELECT id FROM {s}.sitq_tasks
WHERE id = ANY($1::text[])
   OR id IN (SELECT parent_id FROM {s}.sitq_dependencies WHERE child_id = ANY($1::text[]))
ORDER BY id FOR UPDATE

-- name: family_state
-- See the SQLite query.
SELECT c.id, c.status, c.waiting, c.parent_mode, c.available_at, c.cancelled_by,
       p.id, p.status, p.cancelled_by, p.func_name
FROM {s}.sitq_tasks c
JOIN {s}.sitq_dependencies d ON d.child_id = c.id
JOIN {s}.sitq_tasks p ON p.id = d.parent_id
WHERE c.id = ANY($1::text[])
ORDER BY c.id, d.position

-- name: set_wait_state
-- See the SQLite query; one array per column.
UPDATE {s}.sitq_tasks t
SET status = m.status, waiting = m.waiting, available_at = m.available_at,
    cancelled_by = m.cancelled_by,
    error = CASE WHEN m.status = 'cancelled' THEN m.error WHEN m.reset <> 0 THEN NULL
                 ELSE t.error END,
    finished_at = CASE WHEN m.reset <> 0 THEN NULL ELSE t.finished_at END,
    expires_at = CASE WHEN m.reset <> 0 THEN NULL ELSE t.expires_at END,
    attempts = CASE WHEN m.reset <> 0 THEN 0 ELSE t.attempts END,
    worker_id = CASE WHEN m.reset <> 0 THEN NULL ELSE t.worker_id END
FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::text[], $6::text[], $7::int[])
    AS m(id, status, waiting, available_at, cancelled_by, error, reset)
WHERE t.id = m.id
