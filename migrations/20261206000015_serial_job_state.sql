-- Session-serial jobs (turns) keep a running job's live state, and the
-- session it belongs to, on a row of their own (the turn), which a worker
-- writes anyway; their job row is written at enqueue and settle. The job
-- layer reads that state through this view, so it names no domain table: a
-- kind that works the same way adds its rows here with UNION ALL.
CREATE VIEW serial_job_state AS
    SELECT job_id, session_id, status = 'running' AS running, attempts, max_attempts,
           run_at, started_at
    FROM turns;

-- From now on turn jobs reach their session only through the turn row (no
-- `session_id` in their metadata), so the index of the jobs of a session
-- no longer needs to name the turn kind to leave them out. Turn jobs
-- enqueued before this still carry it and are in the index until they are
-- pruned; they are found either way, nothing reads them twice.
DROP INDEX apalis.apalis_jobs_session_idx;
CREATE INDEX apalis_jobs_session_idx ON apalis.jobs ((metadata -> 'session_id'))
    WHERE metadata ? 'session_id';
