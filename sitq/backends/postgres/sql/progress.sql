-- Progress reported from inside running tasks: written by their workers in
-- batches, read by watchers and status displays.

-- name: report_progress
-- One row per report, as arrays: each applies only while its lease holds, so a
-- late report never touches a task that finished or went to another worker.
UPDATE {s}.sitq_tasks t
SET progress_done = v.done, progress_total = v.total, progress_message = v.message,
    progress_at = $1::float8
FROM unnest($2::text[], $3::text[], $4::int[], $5::float8[], $6::float8[], $7::text[])
    AS v(id, worker_id, attempt, done, total, message)
WHERE t.id = v.id AND t.worker_id = v.worker_id AND t.attempts = v.attempt
    AND t.status = 'running'

-- name: task_progress
-- The status as task_statuses reads it, and the progress columns.
SELECT id, CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END,
    progress_done, progress_total, progress_message, progress_at
FROM {s}.sitq_tasks WHERE id = ANY($1::text[])
