-- Workflow runs, steps and items (sitq.workflow.store), PostgreSQL; {s} is the
-- backend's schema. Each item change is one single-row UPDATE by primary key.

-- name: create_run
INSERT INTO {s}.sitq_workflow_runs (id, source, name, text, params, params_preview, status,
    host, pid, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $9)
ON CONFLICT (id) DO NOTHING

-- name: get_run
SELECT id, source, name, text, params, params_preview, status, error, host, pid,
    created_at, updated_at, finished_at
FROM {s}.sitq_workflow_runs WHERE id = $1

-- name: list_runs
SELECT id, source, name, text, params, params_preview, status, error, host, pid,
    created_at, updated_at, finished_at
FROM {s}.sitq_workflow_runs ORDER BY created_at DESC, id DESC LIMIT $1

-- name: update_run
-- A run still 'running' has no finished_at; a new owner (host, pid) is kept unless given.
UPDATE {s}.sitq_workflow_runs
SET status = $2, error = $3, host = COALESCE($4, host), pid = COALESCE($5, pid),
    updated_at = $6::float8,
    finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE $6::float8 END
WHERE id = $1

-- name: heartbeat_run
UPDATE {s}.sitq_workflow_runs SET updated_at = $4::float8
WHERE id = $1 AND status = 'running' AND host = $2 AND pid = $3

-- name: take_over_run
-- A compare-and-set: forced ($5), or the run is not running, or its lease is older
-- than $6, or its owner is the dead one ($7, $8).
UPDATE {s}.sitq_workflow_runs
SET status = 'running', error = NULL, finished_at = NULL, host = $2, pid = $3,
    updated_at = $4::float8
WHERE id = $1 AND ($5::bool OR status <> 'running' OR updated_at < $6::float8
    OR (host = $7::text AND pid = $8::int))

-- name: begin_step
INSERT INTO {s}.sitq_workflow_steps (run_id, name, position, status, total, has_items, items,
    started_at)
VALUES ($1, $2, $3, 'running', $4, $5, $6, $7)
ON CONFLICT (run_id, name) DO NOTHING

-- name: insert_items
-- The items' previews as an array (NULL: none); the index is 0-based.
INSERT INTO {s}.sitq_workflow_items (run_id, step, idx, item_preview, status)
SELECT $1, $2, u.i - 1, u.preview, 'pending'
FROM unnest($3::text[]) WITH ORDINALITY AS u(preview, i)

-- name: update_step
UPDATE {s}.sitq_workflow_steps
SET status = $3, result = $4, result_preview = $5, error = $6,
    finished_at = CASE WHEN $3 = 'running' THEN NULL ELSE $7::float8 END
WHERE run_id = $1 AND name = $2

-- name: list_steps
SELECT name, position, status, total, has_items, result_preview, error, started_at,
    finished_at
FROM {s}.sitq_workflow_steps WHERE run_id = $1 ORDER BY position

-- name: get_step
SELECT name, position, status, total, has_items, result_preview, error, started_at,
    finished_at, items, result
FROM {s}.sitq_workflow_steps WHERE run_id = $1 AND name = $2

-- name: delete_step_items
DELETE FROM {s}.sitq_workflow_items WHERE run_id = $1 AND step = $2

-- name: delete_step
DELETE FROM {s}.sitq_workflow_steps WHERE run_id = $1 AND name = $2

-- name: list_items
-- Results are loaded only when asked for ($3).
SELECT idx, item_preview, status, attempts, result_preview, error, traceback, task_id,
    ran_on, started_at, finished_at, CASE WHEN $3::bool THEN result END
FROM {s}.sitq_workflow_items WHERE run_id = $1 AND step = $2 ORDER BY idx

-- name: item_started
UPDATE {s}.sitq_workflow_items
SET status = 'running', ran_on = $4, attempts = COALESCE($6, attempts), error = NULL,
    traceback = NULL, started_at = $5, finished_at = NULL
WHERE run_id = $1 AND step = $2 AND idx = $3

-- name: item_attempt
UPDATE {s}.sitq_workflow_items SET attempts = $4 WHERE run_id = $1 AND step = $2 AND idx = $3

-- name: item_submitted
UPDATE {s}.sitq_workflow_items SET task_id = $4 WHERE run_id = $1 AND step = $2 AND idx = $3

-- name: item_finished
UPDATE {s}.sitq_workflow_items
SET status = $4, attempts = $5, result = $6, result_preview = $7, error = $8, traceback = $9,
    finished_at = $10
WHERE run_id = $1 AND step = $2 AND idx = $3
