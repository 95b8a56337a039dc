-- Provider limits shared by every worker process: one row per provider
-- (the model provider, the media provider). Each limit is a generic cell
-- rate algorithm (GCRA): `*_tat` is the theoretical arrival time, the
-- moment the bucket would be empty again; a call is allowed while it is
-- at most the burst tolerance ahead of now, and pushes it on by the call's
-- cost (one request; its estimated tokens, corrected after the call by
-- what the provider counted). `paused_until`: the provider answered 429 or
-- 503 with a time to wait; nobody calls it before then.
CREATE TABLE provider_limits (
    provider      text        PRIMARY KEY,
    requests_tat  timestamptz NOT NULL DEFAULT now(),
    tokens_tat    timestamptz NOT NULL DEFAULT now(),
    paused_until  timestamptz NOT NULL DEFAULT '-infinity',
    pause_reason  text
);
