-- Campaign sessions, their members and the invites that admit new members.
--
-- A campaign session is the unit of sharing, ordering and storage: every turn,
-- event and file belongs to exactly one. User ids are the JWT `sub` claim,
-- kept as text because identity providers (Auth0, Keycloak, ...) do not agree
-- on a format.

CREATE TABLE campaign_sessions (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    owner_user_id   text        NOT NULL,
    -- Where the session's files live inside the configured object store;
    -- recorded rather than derived so that a later layout change cannot
    -- strand existing sessions.
    storage_prefix  text        NOT NULL UNIQUE,
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_active_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX campaign_sessions_owner_user_id_idx ON campaign_sessions (owner_user_id);
CREATE INDEX campaign_sessions_updated_at_idx ON campaign_sessions (updated_at);

-- The owner is always a member with role 'owner' (and is the game master).
CREATE TABLE campaign_session_members (
    session_id  uuid        NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    user_id     text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('owner', 'gm', 'player')),
    joined_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, user_id)
);

-- "Sessions I am a member of" is the listing every client starts with.
CREATE INDEX campaign_session_members_user_id_idx ON campaign_session_members (user_id);

-- Invites are bearer secrets: only a SHA-256 of the token is stored, so a
-- database dump admits nobody.
CREATE TABLE campaign_session_invites (
    id          uuid        PRIMARY KEY,
    session_id  uuid        NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    role        text        NOT NULL CHECK (role IN ('gm', 'player')),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    max_uses    integer     NOT NULL CHECK (max_uses >= 1),
    uses        integer     NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    revoked_at  timestamptz
);

CREATE INDEX campaign_session_invites_session_id_idx ON campaign_session_invites (session_id);
