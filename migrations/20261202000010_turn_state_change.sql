-- What a turn's reply did to the session's game state: applied (with the
-- version it made and the update's id) or refused (with why), recorded
-- with the reply in the same statement. Null: the reply asked for no
-- change. Nullable without a default, so adding it rewrites nothing.
ALTER TABLE turns ADD COLUMN state_change jsonb;
