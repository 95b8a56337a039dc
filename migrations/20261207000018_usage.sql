-- What the model and media providers were paid for.
--
-- A completed turn keeps the token counts its provider reported (or the
-- scripted game master's own counts): `{provider, model, prompt_tokens,
-- completion_tokens}`; null when the provider reported none.
ALTER TABLE turns ADD COLUMN usage jsonb;

-- The same counts summed per UTC day, session, user (the turn's author,
-- or whoever asked for the media item), provider and model: written in
-- the statement that records the turn or the media item, so the sums are
-- exactly the recorded counts. No foreign key to the session on purpose:
-- what was spent stays spent when a session is deleted (a user's daily
-- budget must not come back by deleting sessions).
CREATE TABLE usage_daily (
    session_id        uuid    NOT NULL,
    day               date    NOT NULL,
    user_id           text    NOT NULL,
    provider          text    NOT NULL,
    model             text    NOT NULL,
    turns             bigint  NOT NULL DEFAULT 0 CHECK (turns >= 0),
    prompt_tokens     bigint  NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens bigint  NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    images            bigint  NOT NULL DEFAULT 0 CHECK (images >= 0),
    speech_characters bigint  NOT NULL DEFAULT 0 CHECK (speech_characters >= 0),
    PRIMARY KEY (session_id, day, user_id, provider, model)
);

-- One user's spending over days (their budget, the operators' report by user).
CREATE INDEX usage_daily_user_idx ON usage_daily (user_id, day);
-- The operators' report over a range of days, every session.
CREATE INDEX usage_daily_day_idx ON usage_daily (day);
