-- Which committed events may not have reached Redis yet: an outbox that
-- costs almost nothing to keep.
--
-- Until now every event carried a `published` flag, set by an UPDATE once
-- the event was on Redis. That update rewrote the whole event row (with its
-- payload) and an index entry, twice per turn, and `published` being in the
-- partial index's predicate kept it from ever being HOT: about a third of a
-- core at 5,000 turns/s on our 2-core machine (see BENCHMARKS.md).
--
-- Now an AFTER INSERT statement trigger records, for each session a
-- statement appended events to, the range of seqs it appended (one row for
-- a whole batch step or submission), in the inserting transaction,
-- whatever statement inserted them; the publisher deletes a range once it
-- has published the range's last event (a statement's events of one
-- session are handed to the publisher together, in order); the relay
-- publishes every range that stays longer than its grace period.
--
-- The outbox is UNLOGGED: no WAL for either the insert or the delete, which
-- is most of their cost. Its rows are transactional like any other, so a
-- worker or API process that dies between commit and publish leaves its
-- keys behind for the relay. What an unlogged table gives up: after a
-- Postgres crash (or a failover to a replica) it is empty, so an event
-- committed in the last moments before such a crash and not yet published
-- would be published only if a later event of its session is (subscribers
-- fill gaps from Postgres by seq), or when a client reconnects. That is the
-- only window in which a committed event can miss Redis.
CREATE UNLOGGED TABLE event_outbox (
    session_id  uuid        NOT NULL,
    -- The range's last seq (the key the publisher deletes by) and first.
    to_seq      bigint      NOT NULL,
    from_seq    bigint      NOT NULL,
    -- When its first event was written (that event's `at`).
    at          timestamptz NOT NULL,
    PRIMARY KEY (session_id, to_seq)
);

CREATE FUNCTION questboard_event_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_outbox (session_id, to_seq, from_seq, at)
    SELECT session_id, max(seq), min(seq), min(at) FROM new_events GROUP BY session_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER session_events_outbox
    AFTER INSERT ON session_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION questboard_event_outbox();

INSERT INTO event_outbox (session_id, to_seq, from_seq, at)
SELECT session_id, seq, seq, at FROM session_events WHERE NOT published;

DROP INDEX session_events_unpublished_idx;
ALTER TABLE session_events DROP COLUMN published;

-- The foreign key from events to their session ran a lookup of the session
-- row for every event inserted (a tenth of the cost of a batch of steps,
-- by EXPLAIN ANALYZE). Every statement that appends events updates the
-- session's row in the same statement to number them, so the session
-- exists; sessions are archived, never deleted. Whatever comes to delete
-- sessions deletes their events in the same transaction.
ALTER TABLE session_events DROP CONSTRAINT session_events_session_id_fkey;
