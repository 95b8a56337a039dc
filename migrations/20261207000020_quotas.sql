-- Members' quotas and budgets (questboard_core::quotas).

-- Operators' overrides of the quotas' defaults (the QB_* environment),
-- changed at run time through /api/admin/quotas (audited). A quota without
-- a row has its default; 0 turns a quota off.
CREATE TABLE quota_settings (
    name        text        PRIMARY KEY,
    value       bigint      NOT NULL CHECK (value >= 0),
    updated_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One rate bucket per quota and user ('user_turns_per_minute:<user>'):
-- its theoretical arrival time (GCRA). A row whose time has passed is the
-- same as no row. Updated in the transaction that writes what it pays for.
CREATE TABLE quota_buckets (
    key  text        PRIMARY KEY,
    tat  timestamptz NOT NULL
) WITH (fillfactor = 50);

-- Session sockets open now, for the per-user limit across API processes:
-- a row per socket, inserted when it opens (counting the user's others
-- under an advisory lock), deleted when it closes, and touched every 30 s
-- by the process holding it; a row not touched for 90 s belongs to a
-- process that died and no longer counts.
CREATE TABLE live_sockets (
    id        uuid        PRIMARY KEY,
    user_id   text        NOT NULL,
    process   text        NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

CREATE INDEX live_sockets_user ON live_sockets (user_id);
CREATE INDEX live_sockets_process ON live_sockets (process);
