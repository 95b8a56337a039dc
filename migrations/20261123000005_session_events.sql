-- The durable event log of each campaign session.
--
-- Every change to a session (turn queued/started/completed/failed, member
-- joined/left/removed, session updated/archived) appends one event in the
-- same transaction as the change, numbered by `seq`, one more than the
-- session's previous event. Clients resume from the last seq they saw.
ALTER TABLE campaign_sessions ADD COLUMN next_event_seq bigint NOT NULL DEFAULT 1;

CREATE TABLE session_events (
    session_id  uuid        NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    type        text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    data        jsonb       NOT NULL DEFAULT '{}',
    -- Set once the event went out on Redis; the relay publishes the rest.
    published   boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (session_id, seq)
);

-- The relay's backlog: small, because publishing usually follows commit.
CREATE INDEX session_events_unpublished_idx ON session_events (at)
    WHERE NOT published;
