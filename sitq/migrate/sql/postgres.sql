-- sitq migrate (PostgreSQL): read the source a bounded chunk at a time, write
-- the destination with insert-or-ignore by primary key, count both to verify.
-- Generated once from the schema's columns; edit by hand since. Booleans travel
-- as 0/1 integers between the dialects (read ::int, written <> 0).

-- sitq_tasks ------------------------------------------------------------

-- name: read_tasks
-- Rows after $1 in enqueue order (seq); the order key first.
SELECT seq, id, queue, func_name, payload, status, priority, enqueued_at, available_at, attempts, max_retries, retry_backoff, timeout, unique_key, result_ttl, worker_id, lease_expires_at, cancel_requested::int, started_at, finished_at, expires_at, result, error, traceback, limit_key, recorded_start, progress_done, progress_total, progress_message, progress_at, waiting, has_children::int, parent_mode, cancelled_by FROM {s}.sitq_tasks
WHERE seq > $1 ORDER BY seq LIMIT $2

-- name: write_tasks
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at, available_at, attempts, max_retries, retry_backoff, timeout, unique_key, result_ttl, worker_id, lease_expires_at, cancel_requested, started_at, finished_at, expires_at, result, error, traceback, limit_key, recorded_start, progress_done, progress_total, progress_message, progress_at, waiting, has_children, parent_mode, cancelled_by)
SELECT r.id, r.queue, r.func_name, r.payload, r.status, r.priority, r.enqueued_at, r.available_at, r.attempts, r.max_retries, r.retry_backoff, r.timeout, r.unique_key, r.result_ttl, r.worker_id, r.lease_expires_at, r.cancel_requested <> 0, r.started_at, r.finished_at, r.expires_at, r.result, r.error, r.traceback, r.limit_key, r.recorded_start, r.progress_done, r.progress_total, r.progress_message, r.progress_at, r.waiting, r.has_children <> 0, r.parent_mode, r.cancelled_by
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::bigint[], $7::float8[], $8::float8[], $9::bigint[], $10::bigint[], $11::float8[], $12::float8[], $13::text[], $14::float8[], $15::text[], $16::float8[], $17::bigint[], $18::float8[], $19::float8[], $20::float8[], $21::bytea[], $22::text[], $23::text[], $24::text[], $25::bigint[], $26::float8[], $27::float8[], $28::text[], $29::float8[], $30::bigint[], $31::bigint[], $32::text[], $33::text[])
    AS r(id, queue, func_name, payload, status, priority, enqueued_at, available_at, attempts, max_retries, retry_backoff, timeout, unique_key, result_ttl, worker_id, lease_expires_at, cancel_requested, started_at, finished_at, expires_at, result, error, traceback, limit_key, recorded_start, progress_done, progress_total, progress_message, progress_at, waiting, has_children, parent_mode, cancelled_by)
ON CONFLICT DO NOTHING

-- name: count_tasks
SELECT count(*) FROM {s}.sitq_tasks

-- name: existing_tasks
-- Which of the keys given (an array) are in the table.
SELECT id FROM {s}.sitq_tasks WHERE id = ANY($1::text[])

-- name: text_task_ids
-- Whether any task id is not the decimal form of an integer (see sqlite.sql).
SELECT EXISTS (SELECT 1 FROM {s}.sitq_tasks WHERE id !~ '^[1-9][0-9]{0,17}$')

-- name: advance_task_ids
-- PostgreSQL makes text ids: nothing to advance (the parameters are sqlite.sql's).
SELECT CAST($1 AS bigint), CAST($2 AS bigint)

-- name: task_counter
-- PostgreSQL makes text ids: no counter.
SELECT CAST(NULL AS bigint)

-- name: keys_tasks
-- Keys after the one given, in order (for the collision check).
SELECT id FROM {s}.sitq_tasks WHERE id > $1 ORDER BY id LIMIT $2

-- sitq_dependencies -----------------------------------------------------

-- name: read_dependencies
-- Rows after the key given, in key order.
SELECT child_id, position, parent_id, parent_purged::int FROM {s}.sitq_dependencies
WHERE (child_id, position) > ($1, $2) ORDER BY child_id, position LIMIT $3

-- name: write_dependencies
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_dependencies (child_id, position, parent_id, parent_purged)
SELECT r.child_id, r.position, r.parent_id, r.parent_purged <> 0
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])
    AS r(child_id, position, parent_id, parent_purged)
ON CONFLICT DO NOTHING

-- name: count_dependencies
SELECT count(*) FROM {s}.sitq_dependencies

-- sitq_batches ----------------------------------------------------------

-- name: read_batches
-- Rows after the key given, in key order.
SELECT id, created_at, size FROM {s}.sitq_batches
WHERE id > $1 ORDER BY id LIMIT $2

-- name: write_batches
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_batches (id, created_at, size)
SELECT r.id, r.created_at, r.size
FROM unnest($1::text[], $2::float8[], $3::bigint[])
    AS r(id, created_at, size)
ON CONFLICT DO NOTHING

-- name: count_batches
SELECT count(*) FROM {s}.sitq_batches

-- name: existing_batches
-- Which of the keys given (an array) are in the table.
SELECT id FROM {s}.sitq_batches WHERE id = ANY($1::text[])

-- name: keys_batches
-- Keys after the one given, in order (for the collision check).
SELECT id FROM {s}.sitq_batches WHERE id > $1 ORDER BY id LIMIT $2

-- sitq_batch_tasks ------------------------------------------------------

-- name: read_batch_tasks
-- Rows after the key given, in key order.
SELECT batch_id, position, task_id FROM {s}.sitq_batch_tasks
WHERE (batch_id, position) > ($1, $2) ORDER BY batch_id, position LIMIT $3

-- name: write_batch_tasks
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_batch_tasks (batch_id, position, task_id)
SELECT r.batch_id, r.position, r.task_id
FROM unnest($1::text[], $2::bigint[], $3::text[])
    AS r(batch_id, position, task_id)
ON CONFLICT DO NOTHING

-- name: count_batch_tasks
SELECT count(*) FROM {s}.sitq_batch_tasks

-- sitq_workflow_runs ----------------------------------------------------

-- name: read_workflow_runs
-- Rows after the key given, in key order.
SELECT id, source, name, text, params, params_preview, status, error, host, pid, created_at, updated_at, finished_at FROM {s}.sitq_workflow_runs
WHERE id > $1 ORDER BY id LIMIT $2

-- name: write_workflow_runs
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_workflow_runs (id, source, name, text, params, params_preview, status, error, host, pid, created_at, updated_at, finished_at)
SELECT r.id, r.source, r.name, r.text, r.params, r.params_preview, r.status, r.error, r.host, r.pid, r.created_at, r.updated_at, r.finished_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::float8[], $12::float8[], $13::float8[])
    AS r(id, source, name, text, params, params_preview, status, error, host, pid, created_at, updated_at, finished_at)
ON CONFLICT DO NOTHING

-- name: count_workflow_runs
SELECT count(*) FROM {s}.sitq_workflow_runs

-- name: existing_workflow_runs
-- Which of the keys given (an array) are in the table.
SELECT id FROM {s}.sitq_workflow_runs WHERE id = ANY($1::text[])

-- name: keys_workflow_runs
-- Keys after the one given, in order (for the collision check).
SELECT id FROM {s}.sitq_workflow_runs WHERE id > $1 ORDER BY id LIMIT $2

-- sitq_workflow_steps ---------------------------------------------------

-- name: read_workflow_steps
-- Rows after the key given, in key order.
SELECT run_id, name, position, status, total, has_items::int, items, result, result_preview, error, started_at, finished_at FROM {s}.sitq_workflow_steps
WHERE (run_id, name) > ($1, $2) ORDER BY run_id, name LIMIT $3

-- name: write_workflow_steps
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_workflow_steps (run_id, name, position, status, total, has_items, items, result, result_preview, error, started_at, finished_at)
SELECT r.run_id, r.name, r.position, r.status, r.total, r.has_items <> 0, r.items, r.result, r.result_preview, r.error, r.started_at, r.finished_at
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bytea[], $8::bytea[], $9::text[], $10::text[], $11::float8[], $12::float8[])
    AS r(run_id, name, position, status, total, has_items, items, result, result_preview, error, started_at, finished_at)
ON CONFLICT DO NOTHING

-- name: count_workflow_steps
SELECT count(*) FROM {s}.sitq_workflow_steps

-- sitq_workflow_items ---------------------------------------------------

-- name: read_workflow_items
-- Rows after the key given, in key order.
SELECT run_id, step, idx, item_preview, status, attempts, result, result_preview, error, traceback, task_id, ran_on, started_at, finished_at FROM {s}.sitq_workflow_items
WHERE (run_id, step, idx) > ($1, $2, $3) ORDER BY run_id, step, idx LIMIT $4

-- name: write_workflow_items
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_workflow_items (run_id, step, idx, item_preview, status, attempts, result, result_preview, error, traceback, task_id, ran_on, started_at, finished_at)
SELECT r.run_id, r.step, r.idx, r.item_preview, r.status, r.attempts, r.result, r.result_preview, r.error, r.traceback, r.task_id, r.ran_on, r.started_at, r.finished_at
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::float8[], $14::float8[])
    AS r(run_id, step, idx, item_preview, status, attempts, result, result_preview, error, traceback, task_id, ran_on, started_at, finished_at)
ON CONFLICT DO NOTHING

-- name: count_workflow_items
SELECT count(*) FROM {s}.sitq_workflow_items

-- sitq_schedules --------------------------------------------------------

-- name: read_schedules
-- The whole table (small: copied in one transaction).
SELECT name, spec, last_run_at, next_run_at, updated_at FROM {s}.sitq_schedules

-- name: write_schedules
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
SELECT r.name, r.spec, r.last_run_at, r.next_run_at, r.updated_at
FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::float8[])
    AS r(name, spec, last_run_at, next_run_at, updated_at)
ON CONFLICT DO NOTHING

-- name: count_schedules
SELECT count(*) FROM {s}.sitq_schedules

-- name: existing_schedules
-- Which of the keys given (an array) are in the table.
SELECT name FROM {s}.sitq_schedules WHERE name = ANY($1::text[])

-- name: keys_schedules
-- Keys after the one given, in order (for the collision check).
SELECT name FROM {s}.sitq_schedules WHERE name > $1 ORDER BY name LIMIT $2

-- sitq_limits -----------------------------------------------------------

-- name: read_limits
-- The whole table (small: copied in one transaction).
SELECT key, max_running, max_starts, per_seconds FROM {s}.sitq_limits

-- name: write_limits
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_limits (key, max_running, max_starts, per_seconds)
SELECT r.key, r.max_running, r.max_starts, r.per_seconds
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[])
    AS r(key, max_running, max_starts, per_seconds)
ON CONFLICT DO NOTHING

-- name: count_limits
SELECT count(*) FROM {s}.sitq_limits

-- name: existing_limits
-- Which of the keys given (an array) are in the table.
SELECT key FROM {s}.sitq_limits WHERE key = ANY($1::text[])

-- name: keys_limits
-- Keys after the one given, in order (for the collision check).
SELECT key FROM {s}.sitq_limits WHERE key > $1 ORDER BY key LIMIT $2

-- sitq_limit_starts -----------------------------------------------------

-- name: read_limit_starts
-- The whole table (small: copied in one transaction).
SELECT key, started_at FROM {s}.sitq_limit_starts

-- name: write_limit_starts
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_limit_starts (key, started_at)
SELECT r.key, r.started_at
FROM unnest($1::text[], $2::float8[])
    AS r(key, started_at)
ON CONFLICT DO NOTHING

-- name: count_limit_starts
SELECT count(*) FROM {s}.sitq_limit_starts

-- sitq_paused -----------------------------------------------------------

-- name: read_paused
-- The whole table (small: copied in one transaction).
SELECT queue, paused_at FROM {s}.sitq_paused

-- name: write_paused
-- One array per column; a row whose key is there already is skipped.
INSERT INTO {s}.sitq_paused (queue, paused_at)
SELECT r.queue, r.paused_at
FROM unnest($1::text[], $2::float8[])
    AS r(queue, paused_at)
ON CONFLICT DO NOTHING

-- name: count_paused
SELECT count(*) FROM {s}.sitq_paused

-- name: existing_paused
-- Which of the keys given (an array) are in the table.
SELECT queue FROM {s}.sitq_paused WHERE queue = ANY($1::text[])

-- name: keys_paused
-- Keys after the one given, in order (for the collision check).
SELECT queue FROM {s}.sitq_paused WHERE queue > $1 ORDER BY queue LIMIT $2

-- the migration's own state and checks -------------------------------

-- name: count_tasks_by_status
SELECT status, count(*) FROM {s}.sitq_tasks GROUP BY status

-- name: clear_finished_counts
-- After the copy: the finished tasks it inserted are counted afresh with the rest
-- (schema version 11 counts a task as it finishes, by triggers that do not run on
-- insert). First the lock prune's fold takes (it skips while this holds it)...
SELECT pg_advisory_xact_lock(hashtext('sitq_finished'), hashtext('{s}'))

-- name: recount_finished
-- ...then, in one statement (one snapshot: a change committed meanwhile is either
-- in the count or left as its own row), the recorded changes replaced by a count.
WITH cleared AS (DELETE FROM {s}.sitq_finished)
INSERT INTO {s}.sitq_finished (second, queue, state, n)
SELECT CASE WHEN finished_at >= extract(epoch FROM clock_timestamp()) - 3600.0
            THEN floor(finished_at)::bigint ELSE 0 END, queue, status, count(*)
FROM {s}.sitq_tasks
WHERE status IN ('succeeded', 'failed', 'cancelled')
GROUP BY 1, 2, 3

-- name: running_by_worker
-- Running tasks, per worker holding them.
SELECT worker_id, count(*) FROM {s}.sitq_tasks WHERE status = 'running' GROUP BY worker_id

-- name: live_queues
-- The queues with tasks yet to run or running (what --wait pauses).
SELECT DISTINCT queue FROM {s}.sitq_tasks WHERE status IN ('queued', 'running')

-- name: read_marks
-- The migration's marks in the destination (keys migrate:...).
SELECT key, value FROM {s}.sitq_meta WHERE key LIKE 'migrate:%'

-- name: write_mark
INSERT INTO {s}.sitq_meta (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value

-- name: delete_batch_tasks
DELETE FROM {s}.sitq_batch_tasks

-- name: delete_batches
DELETE FROM {s}.sitq_batches

-- name: delete_dependencies
DELETE FROM {s}.sitq_dependencies

-- name: delete_workflow_items
DELETE FROM {s}.sitq_workflow_items

-- name: delete_workflow_steps
DELETE FROM {s}.sitq_workflow_steps

-- name: delete_workflow_runs
DELETE FROM {s}.sitq_workflow_runs

-- name: delete_schedules
DELETE FROM {s}.sitq_schedules

-- name: delete_limits
DELETE FROM {s}.sitq_limits

-- name: delete_limit_starts
DELETE FROM {s}.sitq_limit_starts

-- name: delete_paused
DELETE FROM {s}.sitq_paused

-- name: delete_tasks
DELETE FROM {s}.sitq_tasks
-- name: keys_unique
-- The unique keys held by queued or running tasks, after the one given, in order
-- (--into-existing: one held on both sides could not be copied).
SELECT unique_key FROM {s}.sitq_tasks
WHERE unique_key > $1 AND status IN ('queued', 'running') ORDER BY unique_key LIMIT $2

-- name: existing_unique
SELECT unique_key FROM {s}.sitq_tasks
WHERE unique_key = ANY($1::text[]) AND status IN ('queued', 'running')
