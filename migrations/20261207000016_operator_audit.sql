-- What operators did through /api/admin (and the console on it): who, which
-- action, on what, with what, when, and how it ended. A row is written
-- before the action (outcome `pending`), so no action is ever taken
-- unrecorded (if it cannot be written, the action is refused), and
-- finished after it: `ok`, `refused` (a 4xx answer: nothing changed) or
-- `failed` (a 5xx). A row left `pending` means the process stopped in
-- between. Kept `QB_AUDIT_RETENTION_DAYS` (prune category `audit`).
CREATE TABLE operator_audit (
    -- UUIDv7: ordered by time, the list's keyset.
    id          uuid        PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}',
    outcome     text        NOT NULL DEFAULT 'pending'
                            CHECK (outcome IN ('pending', 'ok', 'refused', 'failed')),
    error       text,
    finished_at timestamptz
);

CREATE INDEX operator_audit_actor ON operator_audit (actor, id DESC);
CREATE INDEX operator_audit_action ON operator_audit (action, id DESC);
