-- Turns (a player's input and the game master's reply) and the leases that
-- serialise work on a campaign session across worker processes.
--
-- The durable job that processes a turn is a row in apalis.jobs (created by
-- apalis-postgres's own migrations, which `questboard migrate` applies first);
-- `turns.job_id` names it. Turn and job are inserted in one transaction.

-- Per-session turn numbering. Taking the next number locks the session row,
-- which also orders concurrent submissions to one session.
ALTER TABLE campaign_sessions ADD COLUMN next_turn_seq bigint NOT NULL DEFAULT 1;

CREATE TABLE turns (
    id               uuid        PRIMARY KEY,
    session_id       uuid        NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    seq              bigint      NOT NULL CHECK (seq >= 1),
    author_user_id   text        NOT NULL,
    input            text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                                 CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    output           text,
    -- Sanitised reason of the last failure (retrying or final).
    error            text,
    job_id           text        NOT NULL UNIQUE,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    -- The lease token under which the result was written (fencing audit).
    fence_token      bigint,
    UNIQUE (session_id, seq),
    UNIQUE (session_id, author_user_id, idempotency_key)
);

-- Finding each session's next unfinished turn: the worker's claim query.
CREATE INDEX turns_unfinished_idx ON turns (session_id, seq)
    WHERE status IN ('queued', 'running');

-- Fencing tokens only ever grow, across all leases, even after a row is
-- released (release expires the row; it is never deleted).
CREATE SEQUENCE lease_tokens AS bigint;

CREATE TABLE leases (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    holder       text,
    -- The holder before the current one, kept so acquisition can tell a
    -- takeover after expiry from a clean hand-off.
    prev_holder  text,
    token        bigint      NOT NULL,
    acquired_at  timestamptz NOT NULL,
    renewed_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
