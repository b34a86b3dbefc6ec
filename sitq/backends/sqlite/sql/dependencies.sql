-- Dependencies: tasks that wait for others (schema version 8; the settling of a
-- parent's dependents is the trigger sitq_tasks_settle_children).

-- name: lock_parents
-- The stored parents of a new dependent, marked as having children (so their final
-- status settles it); inside the write lock, so no finish slips in between.
UPDATE sitq_tasks SET has_children = 1
WHERE id IN (SELECT value FROM json_each(?1))
RETURNING id, status, cancelled_by, func_name

-- name: mark_dependents
-- New tasks' dependency state, a JSON array of
-- [id, waiting, parent_mode, has_children, cancelled_by, error]; ?2 now, ?3 the ttl.
-- One cancelled at birth (a parent already failed) is final at once.
UPDATE sitq_tasks
SET waiting = m.waiting, parent_mode = m.mode, has_children = m.has_children,
    cancelled_by = m.cancelled_by,
    status = CASE WHEN m.cancelled_by IS NULL THEN status ELSE 'cancelled' END,
    error = m.error,
    finished_at = CASE WHEN m.cancelled_by IS NULL THEN NULL ELSE ?2 END,
    expires_at = CASE WHEN m.cancelled_by IS NULL THEN NULL ELSE ?2 + COALESCE(result_ttl, ?3) END
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS waiting,
             json_extract(value, '$[2]') AS mode, json_extract(value, '$[3]') AS has_children,
             json_extract(value, '$[4]') AS cancelled_by, json_extract(value, '$[5]') AS error
      FROM json_each(?1)) AS m
WHERE sitq_tasks.id = m.id

-- name: insert_dependencies
-- A JSON array of [child_id, position, parent_id].
INSERT INTO sitq_dependencies (child_id, position, parent_id)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
FROM json_each(?1)

-- name: task_parents
SELECT parent_id FROM sitq_dependencies WHERE child_id = ?1 ORDER BY position

-- name: task_parent_results
-- A dependent's parents' outcomes, in its order (the result only if it succeeded).
SELECT t.id, t.func_name, t.status, CASE WHEN t.status = 'succeeded' THEN t.result END
FROM sitq_dependencies d JOIN sitq_tasks t ON t.id = d.parent_id
WHERE d.child_id = ?1 ORDER BY d.position

-- name: task_children
SELECT child_id FROM sitq_dependencies WHERE parent_id = ?1 ORDER BY child_id

-- name: task_wait_state
SELECT waiting, parent_mode, cancelled_by FROM sitq_tasks WHERE id = ?1

-- name: rewait_retried
-- Dependents queued again by a retry of their own (?1, a JSON array of ids) wait
-- for those of their parents still queued or running; finished ones (whatever
-- their end) no longer hold them back: the retry asked for the task to run. ?2 now.
UPDATE sitq_tasks
SET cancelled_by = NULL,
    waiting = (SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks p ON p.id = d.parent_id
               WHERE d.child_id = sitq_tasks.id AND p.status IN ('queued', 'running')),
    available_at = ?2 + CASE WHEN EXISTS (
        SELECT 1 FROM sitq_dependencies d JOIN sitq_tasks p ON p.id = d.parent_id
        WHERE d.child_id = sitq_tasks.id AND p.status IN ('queued', 'running')) THEN 1e11 ELSE 0 END
WHERE parent_mode IS NOT NULL AND id IN (SELECT value FROM json_each(?1))

-- name: reawaken_dependents
-- The dependents that a retried parent's failure cancelled (?1: the retried ids)
-- wait again, for every parent that has not succeeded. ?2 now.
UPDATE sitq_tasks
SET status = 'queued', cancelled_by = NULL, error = NULL, finished_at = NULL,
    expires_at = NULL, attempts = 0, worker_id = NULL,
    waiting = (SELECT count(*) FROM sitq_dependencies d JOIN sitq_tasks p ON p.id = d.parent_id
               WHERE d.child_id = sitq_tasks.id AND p.status <> 'succeeded'),
    available_at = ?2 + 1e11
WHERE status = 'cancelled' AND cancelled_by IN (SELECT value FROM json_each(?1))
RETURNING id
