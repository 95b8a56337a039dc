-- The job platform: every kind of durable job on one runtime, next to the
-- turn pipeline.
--
-- Jobs stay rows of apalis.jobs with apalis's own statuses (Pending,
-- Running, Done, Failed, Killed), so apalis tooling can still read them.
-- Turns keep their live state on the turn row (migration 6); the kinds
-- that are not session-serial ("plain" kinds: maintenance, media,
-- migrations) are claimed straight from apalis.jobs, run under a job
-- lease (scope 'job' in `leases`) and settled with a write fenced by it.
-- What apalis has no column for lives in the small tables below.

-- Operators pause and resume a kind; a paused kind is not claimed by any
-- worker. A kind without a row is running.
CREATE TABLE job_kinds (
    kind        text        PRIMARY KEY,
    paused      boolean     NOT NULL DEFAULT false,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    changed_by  text
);

-- What questboard records about a plain job beyond its apalis row: the
-- progress its handler reports (at most once a second), the errors of its
-- last runs (apalis keeps only the last result) and a cancellation
-- request for a running job, which its worker observes. Only jobs that
-- reported progress, failed a run or were asked to stop have a row.
CREATE TABLE job_runs (
    job_id               text        PRIMARY KEY REFERENCES apalis.jobs (id) ON DELETE CASCADE,
    progress_done        bigint,
    progress_total       bigint,
    progress_message     text,
    progress_at          timestamptz,
    -- The last ten failed runs, oldest first: [{attempt, at, error}].
    errors               jsonb       NOT NULL DEFAULT '[]',
    cancel_requested_at  timestamptz,
    cancel_requested_by  text
);

-- Only plain jobs are ever 'Running' (a running turn's job row stays
-- Pending; its turn row says it runs), so this stays as small as the
-- number of jobs running: how workers find the runs whose worker died.
CREATE INDEX apalis_jobs_running_idx ON apalis.jobs (job_type, lock_at)
    WHERE status = 'Running';

-- Jobs failed for good or cancelled, by when they ended: queue statistics
-- and pruning read them without scanning every finished job.
CREATE INDEX apalis_jobs_dead_idx ON apalis.jobs (done_at)
    WHERE status = 'Killed';

-- The jobs of a session other than its turns' (turns reach theirs through
-- turns.job_id), for deleting a session with everything it owns and for
-- the operators' job list. Turn jobs, the bulk of all rows, are not in it.
CREATE INDEX apalis_jobs_session_idx ON apalis.jobs ((metadata -> 'session_id'))
    WHERE job_type <> 'questboard.turn' AND metadata ? 'session_id';

-- The scheduler: the last tick fired per entry, so a restarted or newly
-- elected leader knows what it missed. Written only by the holder of the
-- `scheduler` lease, fenced, in the transaction that enqueues the tick's
-- job (whose unique key `<entry>@<tick>` is a second guard).
CREATE TABLE schedule_ticks (
    entry      text        PRIMARY KEY,
    last_tick  timestamptz NOT NULL,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    job_id     text
);

-- When an invite was last used: `prune` removes used-up invites a while
-- after their last use (older rows fall back to when they were created).
ALTER TABLE campaign_session_invites ADD COLUMN last_used_at timestamptz;

-- Event retention: every event of a session with seq <= this was pruned.
-- A client resuming from an older seq is told to reset instead of being
-- handed a silent gap.
ALTER TABLE campaign_sessions ADD COLUMN events_pruned_through bigint NOT NULL DEFAULT 0;

-- Events are appended in time order, so a BRIN index finds the old ones
-- for pruning at almost no cost per insert (a btree on `at` would add an
-- index entry to each of the three events every turn writes).
CREATE INDEX session_events_at_brin ON session_events USING brin (at);
