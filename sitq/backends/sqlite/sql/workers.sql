-- Workers: registration, liveness, listing, pruning.

-- name: upsert_worker
INSERT OR REPLACE INTO sitq_workers
    (id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at)
VALUES (?, ?, ?, ?, ?, ?, ?, NULL)

-- name: touch_worker
UPDATE sitq_workers SET heartbeat_at = ? WHERE id = ?

-- name: stop_worker
UPDATE sitq_workers SET stopped_at = ? WHERE id = ?

-- name: list_workers
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at
FROM sitq_workers ORDER BY started_at DESC

-- name: prune_workers
DELETE FROM sitq_workers WHERE heartbeat_at < ?
