-- Legacy layout import: the old app kept each campaign as a folder,
-- `campaigns/<env>/campaign_<n> - <Name>/...`, with no owner. An import
-- run scans such a tree, makes a session of every folder the operator's
-- mapping gives an owner, and copies its files into the session's areas.
-- What a run could not decide is recorded, never guessed. The legacy path
-- of every imported folder and file is kept, so old links still resolve
-- (GET /api/legacy/...) and a re-run knows what is done.
CREATE TABLE legacy_import_runs (
    id uuid PRIMARY KEY,
    -- The legacy tree's root (file:///..., s3://..., gs://...).
    source_url text NOT NULL,
    -- "<env>/<folder>" -> {owner, members, gms, skip}, as the operator gave it.
    mapping jsonb NOT NULL,
    -- Limits of the run (legacy_import::Options).
    options jsonb NOT NULL,
    dry_run boolean NOT NULL,
    status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    report jsonb,
    report_key text,
    job_id text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- A legacy folder that became a session.
CREATE TABLE legacy_campaigns (
    env text NOT NULL,
    folder text NOT NULL,
    campaign_number bigint NOT NULL,
    session_id uuid NOT NULL UNIQUE REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    run_id uuid REFERENCES legacy_import_runs (id) ON DELETE SET NULL,
    -- importing: the session exists, files are being copied; imported: done.
    status text NOT NULL DEFAULT 'importing' CHECK (status IN ('importing', 'imported')),
    files integer NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    imported_at timestamptz,
    PRIMARY KEY (env, folder),
    -- Two folders never both become campaign n of an env.
    UNIQUE (env, campaign_number)
);

-- A legacy file and where it went. The key (and media id) is chosen before
-- the copy starts ('pending'), so a copy repeated after a crash overwrites
-- the same object instead of leaving a second one.
CREATE TABLE legacy_files (
    session_id uuid NOT NULL REFERENCES campaign_sessions (id) ON DELETE CASCADE,
    -- Relative to the folder, as the old app named it.
    legacy_path text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'copied')),
    area text NOT NULL,
    name text NOT NULL,
    storage_key text NOT NULL,
    content_type text NOT NULL,
    -- Images and audio are media items too (source 'migrated').
    media_id uuid,
    byte_size bigint,
    sha256 bytea CHECK (octet_length(sha256) = 32),
    copied_at timestamptz,
    PRIMARY KEY (session_id, legacy_path)
);

-- What a run could not decide: folders without an owner, folders claiming
-- the same campaign, folders that are not campaigns, files unreadable,
-- oversized or colliding after their names were made safe.
CREATE TABLE legacy_import_problems (
    run_id uuid NOT NULL REFERENCES legacy_import_runs (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('unowned', 'duplicate', 'not_campaign', 'skipped',
                                       'unreadable', 'oversized', 'collision')),
    -- The legacy path concerned, from the tree's root ("<env>/<folder>[/<file>]").
    path text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, kind, path)
);
