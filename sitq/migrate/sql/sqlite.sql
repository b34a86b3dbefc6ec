-- sitq migrate (SQLite): read the source a bounded chunk at a time, write
-- the destination with insert-or-ignore by primary key, count both to verify.
-- Generated once from the schema's columns; edit by hand since. Booleans travel
-- as 0/1 integers between the dialects.

-- sitq_tasks ------------------------------------------------------------

-- name: read_tasks
-- Rows after ?1 in enqueue order (rowid); the order key first.
SELECT rowid, CAST(id AS TEXT), queue, func_name, payload, status, priority, enqueued_at, available_at, attempts, max_retries, retry_backoff, timeout, unique_key, result_ttl, worker_id, lease_expires_at, cancel_requested, started_at, finished_at, expires_at, result, error, traceback, limit_key, recorded_start, progress_done, progress_total, progress_message, progress_at, waiting, has_children, parent_mode, CAST(cancelled_by AS TEXT) FROM sitq_tasks
WHERE rowid > ?1 ORDER BY rowid LIMIT ?2

-- name: write_tasks
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_tasks (id, queue, func_name, payload, status, priority, enqueued_at, available_at, attempts, max_retries, retry_backoff, timeout, unique_key, result_ttl, worker_id, lease_expires_at, cancel_requested, started_at, finished_at, expires_at, result, error, traceback, limit_key, recorded_start, progress_done, progress_total, progress_message, progress_at, waiting, has_children, parent_mode, cancelled_by)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33)

-- name: count_tasks
SELECT count(*) FROM sitq_tasks

-- name: existing_tasks
-- Which of the keys given (JSON) are in the table.
SELECT CAST(id AS TEXT) FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?1))

-- name: keys_tasks
-- Keys after the one given, in order (for the collision check); '' is before the
-- first, integer or text (SQLite sorts every integer before any text).
SELECT CAST(id AS TEXT) FROM sitq_tasks
WHERE id > (CASE WHEN ?1 = '' THEN -9223372036854775808 ELSE ?1 END) ORDER BY id LIMIT ?2

-- name: text_task_ids
-- Whether any task id is not the decimal form of an integer row id (a text id
-- from PostgreSQL or a file before schema version 13): a file with integer ids
-- cannot take it.
SELECT CASE WHEN (SELECT type FROM pragma_table_info('sitq_tasks') WHERE name = 'id') = 'INTEGER'
    THEN 0  -- every id is one: no scan
    ELSE EXISTS (SELECT 1 FROM sitq_tasks WHERE typeof(id) <> 'integer'
        AND NOT (id GLOB '[1-9]*' AND id NOT GLOB '*[^0-9]*' AND length(id) <= 18)) END

-- name: task_counter
-- Where the source's counter of integer ids stands (ids below it may have been
-- handed out, even to tasks since deleted).
SELECT CAST(value AS INTEGER) FROM sitq_meta WHERE key = 'next_task_id'

-- name: advance_task_ids
-- After the copy: the counter that hands out integer ids (the backend's
-- reserve_task_ids) moves past every id it could meet again: its own, the
-- source's counter ?1 (NULL for a source without one), and every id the tables
-- name, a task's or one only referred to; then a random gap ?2, so that the two
-- files do not go on handing out the same ids.
UPDATE sitq_meta SET value = CAST(?2 + max(
    CAST(value AS INTEGER),
    coalesce(?1, 0),
    (SELECT coalesce(max(id), 0) + 1 FROM sitq_tasks WHERE typeof(id) = 'integer'),
    (SELECT coalesce(max(cancelled_by), 0) + 1 FROM sitq_tasks
     WHERE typeof(cancelled_by) = 'integer'),
    (SELECT coalesce(max(max(child_id, parent_id)), 0) + 1 FROM sitq_dependencies
     WHERE typeof(child_id) = 'integer' AND typeof(parent_id) = 'integer'),
    (SELECT coalesce(max(task_id), 0) + 1 FROM sitq_batch_tasks
     WHERE typeof(task_id) = 'integer'),
    (SELECT coalesce(max(CAST(task_id AS INTEGER)), 0) + 1 FROM sitq_workflow_items
     WHERE task_id GLOB '[1-9]*' AND task_id NOT GLOB '*[^0-9]*' AND length(task_id) <= 18)
) AS TEXT)
WHERE key = 'next_task_id'

-- sitq_dependencies -----------------------------------------------------

-- name: read_dependencies
-- Rows after the key given, in key order.
SELECT CAST(child_id AS TEXT), position, CAST(parent_id AS TEXT), parent_purged
FROM sitq_dependencies
WHERE (child_id, position) > (CASE WHEN ?1 = '' THEN -9223372036854775808 ELSE ?1 END, ?2)
ORDER BY child_id, position LIMIT ?3

-- name: write_dependencies
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_dependencies (child_id, position, parent_id, parent_purged)
VALUES (?1, ?2, ?3, ?4)

-- name: count_dependencies
SELECT count(*) FROM sitq_dependencies

-- sitq_batches ----------------------------------------------------------

-- name: read_batches
-- Rows after the key given, in key order.
SELECT id, created_at, size FROM sitq_batches
WHERE id > ?1 ORDER BY id LIMIT ?2

-- name: write_batches
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_batches (id, created_at, size)
VALUES (?1, ?2, ?3)

-- name: count_batches
SELECT count(*) FROM sitq_batches

-- name: existing_batches
-- Which of the keys given (JSON) are in the table.
SELECT id FROM sitq_batches WHERE id IN (SELECT value FROM json_each(?1))

-- name: keys_batches
-- Keys after the one given, in order (for the collision check).
SELECT id FROM sitq_batches WHERE id > ?1 ORDER BY id LIMIT ?2

-- sitq_batch_tasks ------------------------------------------------------

-- name: read_batch_tasks
-- Rows after the key given, in key order.
SELECT batch_id, position, CAST(task_id AS TEXT) FROM sitq_batch_tasks
WHERE (batch_id, position) > (?1, ?2) ORDER BY batch_id, position LIMIT ?3

-- name: write_batch_tasks
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_batch_tasks (batch_id, position, task_id)
VALUES (?1, ?2, ?3)

-- name: count_batch_tasks
SELECT count(*) FROM sitq_batch_tasks

-- sitq_workflow_runs ----------------------------------------------------

-- name: read_workflow_runs
-- Rows after the key given, in key order.
SELECT id, source, name, text, params, params_preview, status, error, host, pid, created_at, updated_at, finished_at FROM sitq_workflow_runs
WHERE id > ?1 ORDER BY id LIMIT ?2

-- name: write_workflow_runs
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_workflow_runs (id, source, name, text, params, params_preview, status, error, host, pid, created_at, updated_at, finished_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)

-- name: count_workflow_runs
SELECT count(*) FROM sitq_workflow_runs

-- name: existing_workflow_runs
-- Which of the keys given (JSON) are in the table.
SELECT id FROM sitq_workflow_runs WHERE id IN (SELECT value FROM json_each(?1))

-- name: keys_workflow_runs
-- Keys after the one given, in order (for the collision check).
SELECT id FROM sitq_workflow_runs WHERE id > ?1 ORDER BY id LIMIT ?2

-- sitq_workflow_steps ---------------------------------------------------

-- name: read_workflow_steps
-- Rows after the key given, in key order.
SELECT run_id, name, position, status, total, has_items, items, result, result_preview, error, started_at, finished_at FROM sitq_workflow_steps
WHERE (run_id, name) > (?1, ?2) ORDER BY run_id, name LIMIT ?3

-- name: write_workflow_steps
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_workflow_steps (run_id, name, position, status, total, has_items, items, result, result_preview, error, started_at, finished_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)

-- name: count_workflow_steps
SELECT count(*) FROM sitq_workflow_steps

-- sitq_workflow_items ---------------------------------------------------

-- name: read_workflow_items
-- Rows after the key given, in key order.
SELECT run_id, step, idx, item_preview, status, attempts, result, result_preview, error, traceback, task_id, ran_on, started_at, finished_at FROM sitq_workflow_items
WHERE (run_id, step, idx) > (?1, ?2, ?3) ORDER BY run_id, step, idx LIMIT ?4

-- name: write_workflow_items
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_workflow_items (run_id, step, idx, item_preview, status, attempts, result, result_preview, error, traceback, task_id, ran_on, started_at, finished_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)

-- name: count_workflow_items
SELECT count(*) FROM sitq_workflow_items

-- sitq_schedules --------------------------------------------------------

-- name: read_schedules
-- The whole table (small: copied in one transaction).
SELECT name, spec, last_run_at, next_run_at, updated_at FROM sitq_schedules

-- name: write_schedules
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_schedules (name, spec, last_run_at, next_run_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5)

-- name: count_schedules
SELECT count(*) FROM sitq_schedules

-- name: existing_schedules
-- Which of the keys given (JSON) are in the table.
SELECT name FROM sitq_schedules WHERE name IN (SELECT value FROM json_each(?1))

-- name: keys_schedules
-- Keys after the one given, in order (for the collision check).
SELECT name FROM sitq_schedules WHERE name > ?1 ORDER BY name LIMIT ?2

-- sitq_limits -----------------------------------------------------------

-- name: read_limits
-- The whole table (small: copied in one transaction).
SELECT key, max_running, max_starts, per_seconds FROM sitq_limits

-- name: write_limits
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_limits (key, max_running, max_starts, per_seconds)
VALUES (?1, ?2, ?3, ?4)

-- name: count_limits
SELECT count(*) FROM sitq_limits

-- name: existing_limits
-- Which of the keys given (JSON) are in the table.
SELECT key FROM sitq_limits WHERE key IN (SELECT value FROM json_each(?1))

-- name: keys_limits
-- Keys after the one given, in order (for the collision check).
SELECT key FROM sitq_limits WHERE key > ?1 ORDER BY key LIMIT ?2

-- sitq_limit_starts -----------------------------------------------------

-- name: read_limit_starts
-- The whole table (small: copied in one transaction).
SELECT key, started_at FROM sitq_limit_starts

-- name: write_limit_starts
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_limit_starts (key, started_at)
VALUES (?1, ?2)

-- name: count_limit_starts
SELECT count(*) FROM sitq_limit_starts

-- sitq_paused -----------------------------------------------------------

-- name: read_paused
-- The whole table (small: copied in one transaction).
SELECT queue, paused_at FROM sitq_paused

-- name: write_paused
-- One row; a row whose key is there already is skipped.
INSERT OR IGNORE INTO sitq_paused (queue, paused_at)
VALUES (?1, ?2)

-- name: count_paused
SELECT count(*) FROM sitq_paused

-- name: existing_paused
-- Which of the keys given (JSON) are in the table.
SELECT queue FROM sitq_paused WHERE queue IN (SELECT value FROM json_each(?1))

-- name: keys_paused
-- Keys after the one given, in order (for the collision check).
SELECT queue FROM sitq_paused WHERE queue > ?1 ORDER BY queue LIMIT ?2

-- the migration's own state and checks -------------------------------

-- name: count_tasks_by_status
SELECT status, count(*) FROM sitq_tasks GROUP BY status

-- name: clear_finished_counts
-- After the copy: the finished tasks it inserted are counted afresh with the rest
-- (schema version 11 counts a task as it finishes, by triggers that do not run
-- on insert). In the recount's transaction, which holds the write lock.
DELETE FROM sitq_finished

-- name: recount_finished
-- As schema.sql's v11_02_fill_sitq_finished: the last hour by second.
INSERT INTO sitq_finished (second, queue, state, n)
SELECT CASE WHEN finished_at >= (julianday('now') - 2440587.5) * 86400.0 - 3600.0
            THEN CAST(finished_at AS INTEGER) ELSE 0 END AS second,
    queue, status, count(*)
FROM sitq_tasks
WHERE status IN ('succeeded', 'failed', 'cancelled')
GROUP BY second, queue, status

-- name: running_by_worker
-- Running tasks, per worker holding them.
SELECT worker_id, count(*) FROM sitq_tasks WHERE status = 'running' GROUP BY worker_id

-- name: live_queues
-- The queues with tasks yet to run or running (what --wait pauses).
SELECT DISTINCT queue FROM sitq_tasks WHERE status IN ('queued', 'running')

-- name: read_marks
-- The migration's marks in the destination (keys migrate:...).
SELECT key, value FROM sitq_meta WHERE key LIKE 'migrate:%'

-- name: write_mark
INSERT OR REPLACE INTO sitq_meta (key, value) VALUES (?1, ?2)

-- name: delete_batch_tasks
DELETE FROM sitq_batch_tasks

-- name: delete_batches
DELETE FROM sitq_batches

-- name: delete_dependencies
DELETE FROM sitq_dependencies

-- name: delete_workflow_items
DELETE FROM sitq_workflow_items

-- name: delete_workflow_steps
DELETE FROM sitq_workflow_steps

-- name: delete_workflow_runs
DELETE FROM sitq_workflow_runs

-- name: delete_schedules
DELETE FROM sitq_schedules

-- name: delete_limits
DELETE FROM sitq_limits

-- name: delete_limit_starts
DELETE FROM sitq_limit_starts

-- name: delete_paused
DELETE FROM sitq_paused

-- name: delete_tasks
DELETE FROM sitq_tasks
-- name: keys_unique
-- The unique keys held by queued or running tasks, after the one given, in order
-- (--into-existing: one held on both sides could not be copied).
SELECT unique_key FROM sitq_tasks
WHERE unique_key > ?1 AND status IN ('queued', 'running') ORDER BY unique_key LIMIT ?2

-- name: existing_unique
SELECT unique_key FROM sitq_tasks
WHERE unique_key IN (SELECT value FROM json_each(?1)) AND status IN ('queued', 'running')
