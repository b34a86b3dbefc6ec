-- Queries on a connection the application holds (queue.using): which database it reaches.

-- name: connection_identity
-- The database and the server (its port and start time tell two servers on one host
-- apart), and whether sitq's tables are in the schema ($1: sitq_meta's qualified name).
SELECT current_database(), current_setting('port'), pg_postmaster_start_time()::text,
       to_regclass($1::text) IS NOT NULL
