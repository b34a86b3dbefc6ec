-- Progress reported from inside running tasks: written by their workers in
-- batches, read by watchers and status displays.

-- name: report_progress
-- ?2 is a JSON array of [id, worker_id, attempt, done, total, message]: each
-- applies only while its lease holds, so a late report never touches a task
-- that finished or went to another worker. ?1 is now.
UPDATE sitq_tasks
SET progress_done = v.done, progress_total = v.total, progress_message = v.message,
    progress_at = ?1
FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS worker_id,
             json_extract(value, '$[2]') AS attempt, json_extract(value, '$[3]') AS done,
             json_extract(value, '$[4]') AS total, json_extract(value, '$[5]') AS message
      FROM json_each(?2)) AS v
WHERE sitq_tasks.id = v.id AND sitq_tasks.worker_id = v.worker_id
    AND sitq_tasks.attempts = v.attempt AND sitq_tasks.status = 'running'

-- name: task_progress
-- The status as task_statuses reads it, and the progress columns.
SELECT CAST(id AS TEXT), CASE WHEN status = 'running' AND started_at IS NULL THEN 'queued' ELSE status END,
    progress_done, progress_total, progress_message, progress_at
FROM sitq_tasks WHERE id IN (SELECT value FROM json_each(?))
