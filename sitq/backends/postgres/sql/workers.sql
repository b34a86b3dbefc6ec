-- Workers: registration, liveness, listing, pruning.

-- name: upsert_worker
INSERT INTO {s}.sitq_workers
    (id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
    queues = EXCLUDED.queues, concurrency = EXCLUDED.concurrency,
    started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, stopped_at = NULL

-- name: touch_worker
UPDATE {s}.sitq_workers SET heartbeat_at = $1 WHERE id = $2

-- name: stop_worker
UPDATE {s}.sitq_workers SET stopped_at = $1 WHERE id = $2

-- name: list_workers
SELECT id, hostname, pid, queues, concurrency, started_at, heartbeat_at, stopped_at
FROM {s}.sitq_workers ORDER BY started_at DESC

-- name: prune_workers
DELETE FROM {s}.sitq_workers WHERE heartbeat_at < $1
