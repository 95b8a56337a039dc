-- What the AI game master may change on its own, per session, set by the
-- owner (`PATCH /api/sessions/{id}`):
--   apply   - the AI is the game master: the state changes and images its
--             replies ask for apply, whoever's turn it answered;
--   propose - (the default) its changes from a player's turn are held as a
--             proposal an owner or gm approves or rejects; from an owner's
--             or gm's turn they apply;
--   off     - its replies change nothing (the request is refused, the
--             reply stands).
-- The default is the safe one: a player cannot change GM-owned state by
-- typing (or by talking a model into it). Existing sessions take it too.
-- A constant default: adding the column rewrites nothing.
ALTER TABLE campaign_sessions
    ADD COLUMN ai_authority text NOT NULL DEFAULT 'propose'
        CHECK (ai_authority IN ('apply', 'propose', 'off'));

-- Changes held for a game master's review: the operations and image
-- prompts of one reply to a player's turn, in a `propose` session. A
-- decision is final: `approved` (the operations applied against the state
-- as it then was, as the approver's update; the images asked for) or
-- `rejected`. Deleted with the session; decided ones pruned with the
-- session events of their time (`prune` step `proposals`).
CREATE TABLE state_proposals (
    id          uuid        PRIMARY KEY,
    session_id  uuid        NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    turn_id     uuid        NOT NULL,
    -- The player whose turn the reply answered.
    proposed_for text       NOT NULL,
    operations  jsonb       NOT NULL,
    images      jsonb       NOT NULL DEFAULT '[]',
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'approved', 'rejected')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    decided_by  text,
    decided_at  timestamptz,
    reason      text,
    -- When approved with operations: the update it made.
    update_id   uuid,
    version     bigint,
    UNIQUE (turn_id)
);

-- A session's proposals, newest first (ids are UUIDv7: they sort by
-- time; the list route pages by id), and its undecided ones (the cap).
CREATE INDEX state_proposals_session_idx ON state_proposals (session_id, id DESC);
CREATE INDEX state_proposals_pending_idx ON state_proposals (session_id) WHERE status = 'pending';
-- Prune finds decided proposals by age.
CREATE INDEX state_proposals_decided_idx ON state_proposals USING brin (decided_at);

-- A session's invites, newest first (UUIDv7 ids), paged by id.
CREATE INDEX campaign_session_invites_session_page_idx
    ON campaign_session_invites (session_id, id DESC);
