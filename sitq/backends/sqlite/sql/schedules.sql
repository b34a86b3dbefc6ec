-- Periodic schedules: which run of each was last enqueued.

-- name: advance_schedule
-- Records the run of a schedule due at ?3 unless one at or after it is recorded.
INSERT INTO sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, last_run_at = excluded.last_run_at,
    next_run_at = excluded.next_run_at, updated_at = excluded.updated_at
WHERE sitq_schedules.last_run_at < excluded.last_run_at

-- name: add_schedule
-- A schedule's first sighting: recorded once, never moving a recorded time.
INSERT INTO sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (name) DO NOTHING

-- name: list_schedules
SELECT name, spec, last_run_at, next_run_at, updated_at FROM sitq_schedules ORDER BY name
