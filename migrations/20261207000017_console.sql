-- What the operators' console needs. Which worker processes are alive: each
-- worker upserts its row every few seconds (`seen_at`) and deletes it when
-- it stops cleanly. A row not seen for three beats is a dead worker (it
-- crashed; its leases lapse and are taken over); rows not seen for a day
-- are removed by the next beat of any worker. What a worker runs is read
-- from the leases it holds (`leases.holder` is its id), not kept here.
CREATE TABLE worker_heartbeats (
    id          text        PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    kinds       text[]      NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);


-- The operators' job list filtered by kind, newest first, without walking
-- every job of other kinds: turn jobs (the bulk of all rows, found by a
-- walk of the primary key since they are most of it) are left out, so
-- submitting a turn writes no entry here.
CREATE INDEX apalis_jobs_kind_idx ON apalis.jobs (job_type, id)
    WHERE job_type <> 'questboard.turn';

-- Jobs that failed for good, were cancelled, or wait to retry, by kind and
-- newest first: the job list's `status=failed` (or `cancelled`,
-- `retrying`) filter of any kind, turns included. Small: a job enters it
-- only when a run fails.
CREATE INDEX apalis_jobs_ended_badly_idx ON apalis.jobs (job_type, id)
    WHERE status IN ('Killed', 'Failed');

-- Jobs that gave their unique key up (failed or cancelled: the key moved
-- to `metadata`), by that key: the job list's `unique_key` filter finds
-- them without a walk of the table (holders are found through apalis's
-- index of held keys). Only such jobs have an entry.
CREATE INDEX apalis_jobs_gave_up_key_idx ON apalis.jobs ((metadata -> 'unique_key'))
    WHERE metadata ? 'unique_key';
