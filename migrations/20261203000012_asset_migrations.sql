-- Asset migration: maps and notes moved out of the old campaign service's
-- database (binary columns) into object storage, as media rows of source
-- `migrated`. A run remembers where it reads from, how far it got and
-- what became of every asset, so a worker killed mid-run resumes where it
-- was, nothing is migrated twice, and a rollback knows what to put back.
CREATE TABLE asset_migration_runs (
    id uuid PRIMARY KEY,
    -- The source database (a Postgres URL, perhaps with a password: kept
    -- here, never in a job payload, which operators read).
    source_url text NOT NULL,
    -- Tables, columns, limits of the run (asset_migration::Options).
    options jsonb NOT NULL,
    dry_run boolean NOT NULL,
    status text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'completed', 'aborted', 'failed', 'rolling_back', 'rolled_back')),
    -- Per source table, the last source id of a finished page.
    checkpoint jsonb NOT NULL DEFAULT '{}',
    -- Assets the run found to do when it started.
    total bigint,
    report jsonb,
    report_key text,
    job_id text,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE asset_migration_items (
    run_id uuid NOT NULL REFERENCES asset_migration_runs (id) ON DELETE CASCADE,
    source_table text NOT NULL,
    source_id text NOT NULL,
    -- pending: its media id is chosen (an upload may be under way);
    -- stored: object verified and media row written, the source not yet
    -- updated; migrated: the source points at it; validated: a dry run
    -- found it fine; failed: reason says why; rolled_back: put back.
    status text NOT NULL
        CHECK (status IN ('pending', 'stored', 'migrated', 'validated', 'failed', 'rolled_back')),
    media_id uuid NOT NULL,
    session_id uuid,
    storage_key text,
    byte_size bigint,
    sha256 bytea,
    reason text,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, source_table, source_id)
);
CREATE INDEX asset_migration_items_status ON asset_migration_items (run_id, status);

-- The campaign -> session mapping of a run (from a CSV file).
CREATE TABLE asset_migration_campaigns (
    run_id uuid NOT NULL REFERENCES asset_migration_runs (id) ON DELETE CASCADE,
    campaign_id text NOT NULL,
    session_id uuid NOT NULL,
    PRIMARY KEY (run_id, campaign_id)
);
