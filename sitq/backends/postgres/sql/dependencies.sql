-- Dependencies: tasks that wait for others (schema version 8; the settling of a
-- parent's dependents is the trigger sitq_tasks_settle_children).

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
-- A dependent's parents' outcomes, in its order (the result only if it succeeded).
SELECT t.id, t.func_name, t.status, CASE WHEN t.status = 'succeeded' THEN t.result END
FROM {s}.sitq_dependencies d JOIN {s}.sitq_tasks t ON t.id = d.parent_id
WHERE d.child_id = $1 ORDER BY d.position

-- name: task_children
SELECT child_id FROM {s}.sitq_dependencies WHERE parent_id = $1 ORDER BY child_id

-- name: task_wait_state
SELECT waiting, parent_mode, cancelled_by FROM {s}.sitq_tasks WHERE id = $1

-- name: rewait_retried
-- See the SQLite query. $1 the ids, $2 now.
UPDATE {s}.sitq_tasks t
SET cancelled_by = NULL,
    waiting = (SELECT count(*) FROM {s}.sitq_dependencies d JOIN {s}.sitq_tasks p ON p.id = d.parent_id
               WHERE d.child_id = t.id AND p.status IN ('queued', 'running')),
    available_at = $2::float8 + CASE WHEN EXISTS (
        SELECT 1 FROM {s}.sitq_dependencies d JOIN {s}.sitq_tasks p ON p.id = d.parent_id
        WHERE d.child_id = t.id AND p.status IN ('queued', 'running')) THEN 1e11 ELSE 0 END
WHERE t.parent_mode IS NOT NULL AND t.id = ANY($1::text[])

-- name: reawaken_dependents
-- See the SQLite query. $1 the retried ids, $2 now.
UPDATE {s}.sitq_tasks t
SET status = 'queued', cancelled_by = NULL, error = NULL, finished_at = NULL,
    expires_at = NULL, attempts = 0, worker_id = NULL,
    waiting = (SELECT count(*) FROM {s}.sitq_dependencies d JOIN {s}.sitq_tasks p ON p.id = d.parent_id
               WHERE d.child_id = t.id AND p.status <> 'succeeded'),
    available_at = $2::float8 + 1e11
WHERE t.status = 'cancelled' AND t.cancelled_by = ANY($1::text[])
RETURNING t.id
