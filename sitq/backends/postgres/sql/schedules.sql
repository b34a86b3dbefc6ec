-- Periodic schedules: which run of each was last enqueued.

-- name: advance_schedule
-- Records the run of a schedule due at $3 unless one at or after it is recorded.
INSERT INTO {s}.sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, last_run_at = EXCLUDED.last_run_at,
    next_run_at = EXCLUDED.next_run_at, updated_at = EXCLUDED.updated_at
WHERE {s}.sitq_schedules.last_run_at < EXCLUDED.last_run_at
RETURNING name

-- name: add_schedule
-- A schedule's first sighting: recorded once, never moving a recorded time.
INSERT INTO {s}.sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO NOTHING
RETURNING name

-- name: list_schedules
SELECT name, spec, last_run_at, next_run_at, updated_at FROM {s}.sitq_schedules ORDER BY name
