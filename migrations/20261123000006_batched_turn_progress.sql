-- Cheaper per-turn writes, found by profiling `questboard bench` (see
-- BENCHMARKS.md, "Changes made because of measurements").
--
-- Workers now claim sessions, start and settle turns in batches (one
-- statement for many sessions); what was left to win is the cost of each
-- row written. An UPDATE that changes no indexed column, and finds room on
-- its page, is a HOT update: one new heap tuple, no index entries.

-- The turn row carries its job's live scheduling state: how many runs have
-- started, how many are allowed, and when it may run next (a retry's
-- backoff). Starting a run is then one HOT update of the turn; the job row
-- in apalis.jobs is written when the job is enqueued and when a run
-- settles (done, failed, retrying, handed back), with the same attempts.
-- Before, every start also rewrote the job row, which is never HOT: its
-- status is in the predicate of apalis's fetch index.
ALTER TABLE turns
    ADD COLUMN attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    ADD COLUMN max_attempts integer     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    ADD COLUMN run_at       timestamptz NOT NULL DEFAULT now();

UPDATE turns t
SET attempts = j.attempts, max_attempts = greatest(j.max_attempts, 1), run_at = j.run_at
FROM apalis.jobs j
WHERE j.id = t.job_id;

-- `turns.status` was part of the partial index below, so every status
-- change rewrote every index of the row. Workers no longer need it: the
-- runnable-session index keeps, per session, the seq from which unfinished
-- turns may start (`from_seq`), and the claim reads forward from there on
-- the (session_id, seq) unique index.
DROP INDEX IF EXISTS turns_unfinished_idx;

-- Each turn is updated twice after its insert (started, then settled): leave
-- room on every page for those new versions so that they stay HOT. The same
-- for the rows updated once or twice per turn whose updated columns are not
-- indexed: a session's counters (`next_turn_seq`, `next_event_seq`) and the
-- session leases (renewals, hand-overs). Only pages written from now on get
-- the room; `VACUUM FULL` would repack older ones.
ALTER TABLE turns SET (fillfactor = 50);
ALTER TABLE campaign_sessions SET (fillfactor = 50);
ALTER TABLE leases SET (fillfactor = 50);

-- All turns of a session with seq < from_seq are finished. Maintained by the
-- worker that releases the session; a session that becomes runnable again
-- starts at its newest turn. Existing rows: 1 is always correct.
--
-- `ready_at` now also covers sessions being worked on: a claim sets it to
-- the lease's expiry and renewals push it along, so a claim's index scan
-- (`ready_at <= now()`) only meets sessions nobody holds, instead of
-- stepping over every busy one.
ALTER TABLE session_queue ADD COLUMN from_seq bigint NOT NULL DEFAULT 1;

-- apalis-postgres's first migration created `unique_job_id` (id) and `LIdx`
-- (lock_by); later ones added the primary key on id and
-- `idx_apalis_jobs_lock_by`, without dropping the older two. Every
-- non-HOT write of a job (insert, each status change) wrote both copies.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;

-- The lock_by and idempotency-key indexes only ever serve lookups of a
-- non-NULL value (`lock_by = $1`; uniqueness ignores NULLs), yet held one
-- entry per row version, NULL or not: questboard's jobs have neither. Same
-- names, same answers, entries only where there is something to find.
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by;
CREATE INDEX idx_apalis_jobs_lock_by ON apalis.jobs (lock_by) WHERE lock_by IS NOT NULL;
DROP INDEX IF EXISTS apalis.idx_jobs_idempotency_key;
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON apalis.jobs (job_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
