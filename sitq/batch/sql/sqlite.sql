-- Named batches (sitq.batch.store), SQLite. Parameters are numbered (?1, ?2 ...)
-- in the same order as in postgres.sql. Tables: sitq_batches, sitq_batch_tasks
-- (created by the backend's schema migration).

-- name: create_batch
INSERT INTO sitq_batches (id, created_at, size) VALUES (?1, ?2, 0)
ON CONFLICT (id) DO NOTHING

-- name: reserve_positions
-- Reserve positions for ?3 new members (creating the batch if missing); returns
-- the first reserved position. Run inside the enqueue's transaction. If ?4, a
-- compare-and-set: no row (so nothing reserved) unless the batch is empty (a
-- batch that does not exist is).
INSERT INTO sitq_batches (id, created_at, size) VALUES (?1, ?2, ?3)
ON CONFLICT (id) DO UPDATE SET size = size + excluded.size WHERE NOT ?4 OR size = 0
RETURNING size - ?3

-- name: reserve_positions_if_size
-- The compare-and-set when the batch should have ?3 members.
UPDATE sitq_batches SET size = size + ?2 WHERE id = ?1 AND size = ?3
RETURNING size - ?2

-- name: insert_members
-- The members as a JSON array of ids; json_each's key is the 0-based index.
INSERT INTO sitq_batch_tasks (batch_id, position, task_id)
SELECT ?1, ?2 + key, value FROM json_each(?3)

-- name: get_batch
SELECT id, created_at, size FROM sitq_batches WHERE id = ?1

-- name: list_batches
-- A page of them (a NULL limit: all); the sort keeps only the page, not every row.
SELECT id, created_at, size FROM sitq_batches ORDER BY created_at DESC, id
LIMIT coalesce(?1, -1) OFFSET ?2

-- name: batch_members
SELECT position, CAST(task_id AS TEXT) FROM sitq_batch_tasks WHERE batch_id = ?1 ORDER BY position

-- name: count_batch_statuses
-- A task claimed but not started reads as queued (as everywhere).
SELECT CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END
    AS state, COUNT(*)
FROM sitq_batch_tasks b JOIN sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = ?1 GROUP BY state

-- name: delete_members
DELETE FROM sitq_batch_tasks WHERE batch_id = ?1

-- name: delete_batch
DELETE FROM sitq_batches WHERE id = ?1
