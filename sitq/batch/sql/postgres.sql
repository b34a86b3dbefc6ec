-- Named batches (sitq.batch.store), PostgreSQL. {s} is the backend's schema.
-- Tables: sitq_batches, sitq_batch_tasks (created by the backend's schema
-- migration; members go with their batch by cascade, delete_members is for SQLite's
-- sake).

-- name: create_batch
INSERT INTO {s}.sitq_batches (id, created_at, size) VALUES ($1, $2, 0)
ON CONFLICT (id) DO NOTHING

-- name: reserve_positions
-- Reserve positions for $3 new members (creating the batch if missing); the row
-- lock serializes producers appending to one batch. Returns the first one. If $4,
-- a compare-and-set: no row (so nothing reserved) unless the batch is empty (a
-- batch that does not exist is).
INSERT INTO {s}.sitq_batches AS b (id, created_at, size) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET size = b.size + EXCLUDED.size WHERE NOT $4::boolean OR b.size = 0
RETURNING b.size - $3

-- name: reserve_positions_if_size
-- The compare-and-set when the batch should have $3 members.
UPDATE {s}.sitq_batches SET size = size + $2 WHERE id = $1 AND size = $3
RETURNING size - $2

-- name: insert_members
INSERT INTO {s}.sitq_batch_tasks (batch_id, position, task_id)
SELECT $1, $2 + t.ord - 1, t.id FROM unnest($3::text[]) WITH ORDINALITY AS t(id, ord)

-- name: get_batch
SELECT id, created_at, size FROM {s}.sitq_batches WHERE id = $1

-- name: list_batches
-- A page of them (LIMIT NULL: all); a top-N sort keeps only the page.
SELECT id, created_at, size FROM {s}.sitq_batches ORDER BY created_at DESC, id
LIMIT $1::bigint OFFSET $2::bigint

-- name: batch_members
SELECT position, task_id FROM {s}.sitq_batch_tasks WHERE batch_id = $1 ORDER BY position

-- name: count_batch_statuses
-- A task claimed but not started reads as queued (as everywhere).
SELECT CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END
    AS state, count(*)
FROM {s}.sitq_batch_tasks b JOIN {s}.sitq_tasks t ON t.id = b.task_id
WHERE b.batch_id = $1 GROUP BY state

-- name: delete_members
DELETE FROM {s}.sitq_batch_tasks WHERE batch_id = $1

-- name: delete_batch
DELETE FROM {s}.sitq_batches WHERE id = $1
