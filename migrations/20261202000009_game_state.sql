-- The game state: one versioned JSON document per session, changed only
-- by its game master through small operations checked against `version`
-- (core/src/state). Every session has exactly one row: existing sessions
-- get theirs here, new ones from the trigger below, at version 0.
CREATE TABLE game_states (
    session_id  uuid        PRIMARY KEY REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    version     bigint      NOT NULL DEFAULT 0,
    -- characters, actors, items (arrays), currentEncounter (object or
    -- null), pluginData (object); the server checks these keys and types
    -- on every write, never what plugins keep inside.
    state       jsonb       NOT NULL DEFAULT
        '{"characters": [], "actors": [], "items": [], "currentEncounter": null, "pluginData": {}}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO game_states (session_id, updated_at)
SELECT id, created_at FROM campaign_sessions;

CREATE FUNCTION game_state_for_new_session() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO game_states (session_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER campaign_sessions_game_state
    AFTER INSERT ON campaign_sessions
    FOR EACH ROW EXECUTE FUNCTION game_state_for_new_session();

-- Client-chosen update ids (`id` of an update): the same id again gets the
-- first answer and applies nothing. `request_hash` (sha256 of the version
-- and operations) tells a resend from a different update reusing the id.
-- Pruned after a week (`prune`, category `state_requests`).
CREATE TABLE game_state_requests (
    session_id    uuid        NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    request_id    text        NOT NULL,
    request_hash  bytea       NOT NULL,
    update_id     uuid        NOT NULL,
    new_version   bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, request_id)
);

CREATE INDEX game_state_requests_created_idx ON game_state_requests USING brin (created_at);
