-- The runnable-sessions index: one row per campaign session that has
-- unfinished turns, with the time its next turn may run.
--
-- Workers claim sessions from here (`ready_at <= now()`, lease free) with
-- an index range scan, instead of grouping every unfinished turn by session
-- on each claim, which grew with the backlog (O(turns) per claim).
-- Maintained by questboard_core::turns: submitting inserts the row, a retry
-- moves `ready_at` to the retry time, a drain that empties the session
-- deletes it (under the session row lock that submissions also take, so a
-- concurrent submission is never lost).
CREATE TABLE session_queue (
    session_id  uuid        PRIMARY KEY REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    ready_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX session_queue_ready_at_idx ON session_queue (ready_at);

INSERT INTO session_queue (session_id, ready_at)
SELECT DISTINCT session_id, now() FROM turns WHERE status IN ('queued', 'running');
