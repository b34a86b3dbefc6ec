-- Dependencies: tasks that wait for others (schema version 9, 10; the settling of a
-- parent's dependents is the trigger sitq_tasks_ended, since version 12).

-- name: lock_parents
-- The stored parents of a new dependent, marked as having children (so their final
-- status settles it); inside the write lock, so no finish slips in between.
UPDATE sitq_tasks SET has_children = 1
WHERE id IN (SELECT value FROM json_each(?1))
RETURNING CAST(id AS TEXT), status, CAST(cancelled_by AS TEXT), func_name

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
SELECT CAST(parent_id AS TEXT) FROM sitq_dependencies WHERE child_id = ?1 ORDER BY position

-- name: task_parent_results
-- A dependent's parents' outcomes, one row per parent in its order (the result only
-- if it succeeded); a parent whose row is gone has the status 'purged' (deleted
-- before it finished, so it ended without a result) or 'missing' (deleted since).
SELECT CAST(d.parent_id AS TEXT), COALESCE(t.func_name, ''),
       CASE WHEN t.id IS NOT NULL THEN t.status
            WHEN d.parent_purged <> 0 THEN 'purged' ELSE 'missing' END,
       CASE WHEN t.status = 'succeeded' THEN t.result END
FROM sitq_dependencies d LEFT JOIN sitq_tasks t ON t.id = d.parent_id
WHERE d.child_id = ?1 ORDER BY d.position

-- name: task_children
SELECT CAST(child_id AS TEXT) FROM sitq_dependencies WHERE parent_id = ?1 ORDER BY child_id

-- name: task_wait_state
SELECT waiting, parent_mode, CAST(cancelled_by AS TEXT) FROM sitq_tasks WHERE id = ?1

-- name: retry_family
-- The tasks a retry of ?1 (a JSON array of ids) may change (see backends.rewait):
-- those ids, the dependents their failure cancelled (transitively; each names the
-- root of its cancel), and the queued dependents of all of these.
WITH RECURSIVE family(id, expand) AS (
    -- the stored ids, as the column holds them (an integer, or text)
    SELECT id, 1 FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?1))
    UNION
    SELECT id, 1 FROM sitq_tasks
    WHERE cancelled_by IN (SELECT value FROM json_each(?1)) AND status = 'cancelled'
    UNION
    SELECT c.id, c.status = 'cancelled'
    FROM family f
    JOIN sitq_dependencies d ON d.parent_id = f.id
    JOIN sitq_tasks c ON c.id = d.child_id
    WHERE f.expand AND (c.status = 'queued' OR (
        c.status = 'cancelled' AND c.cancelled_by IN (SELECT value FROM json_each(?1))))
)
SELECT DISTINCT CAST(id AS TEXT) FROM family ORDER BY id

-- name: lock_tasks
-- PostgreSQL locks the tasks and their parents here; with SQLite's one writer at a
-- time nothing else is in flight.
SELECT ?1 IS NULL

-- name: family_state
-- Per task of ?1 that waits for others, its state and each stored parent's, one row
-- per parent in its order.
SELECT CAST(c.id AS TEXT), c.status, c.waiting, c.parent_mode, c.available_at,
       CAST(c.cancelled_by AS TEXT), CAST(p.id AS TEXT), p.status, CAST(p.cancelled_by AS TEXT),
       p.func_name
FROM sitq_tasks c
JOIN sitq_dependencies d ON d.child_id = c.id
JOIN sitq_tasks p ON p.id = d.parent_id
WHERE c.id IN (SELECT value FROM json_each(?1))
ORDER BY c.id, d.position

-- name: set_wait_state
-- backends.rewait's rows, a JSON array of
-- [id, status, waiting, available_at, cancelled_by, error, reset]; reset clears the
-- end of a cancelled task that waits again. The status never goes from unfinished
-- to final here, so sitq_tasks_ended settles no dependent.
UPDATE sitq_tasks
SET status = m.status, waiting = m.waiting, available_at = m.available_at,
    cancelled_by = m.cancelled_by,
    error = CASE WHEN m.status = 'cancelled' THEN m.error WHEN m.reset THEN NULL ELSE sitq_tasks.error END,
    finished_at = CASE WHEN m.reset THEN NULL ELSE sitq_tasks.finished_at END,
    expires_at = CASE WHEN m.reset THEN NULL ELSE sitq_tasks.expires_at END,
    attempts = CASE WHEN m.reset THEN 0 ELSE sitq_tasks.attempts END,
    worker_id = CASE WHEN m.reset THEN NULL ELSE sitq_tasks.worker_id END
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS status,
             json_extract(value, '$[2]') AS waiting, json_extract(value, '$[3]') AS available_at,
             json_extract(value, '$[4]') AS cancelled_by, json_extract(value, '$[5]') AS error,
             json_extract(value, '$[6]') AS reset
      FROM json_each(?1)) AS m
WHERE sitq_tasks.id = m.id
