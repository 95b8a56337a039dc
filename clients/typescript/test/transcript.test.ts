import { test } from "node:test";
import assert from "node:assert/strict";

import type { SessionEvent, TurnDelta } from "../src/events.js";
import { Transcript } from "../src/transcript.js";

let seq = 0;
function ev(type: string, data: Record<string, unknown>): SessionEvent {
  seq += 1;
  return { seq, type, session_id: "s", at: "", data: data as SessionEvent["data"] };
}
function delta(turn: string, attempt: number, index: number, text: string): TurnDelta {
  return { type: "turn.delta", session_id: "s", turn_id: turn, attempt, started_seq: 0, index, text };
}

test("turns are in order with their authors, replies stream and complete", () => {
  const t = new Transcript();
  t.event(ev("turn.queued", { turn_id: "b", seq: 2, author_user_id: "bob", input: "I hide." }));
  t.event(ev("turn.queued", { turn_id: "a", seq: 1, author_user_id: "alice", input: "I look." }));
  t.event(ev("turn.started", { turn_id: "a", seq: 1, attempt: 1 }));
  t.delta(delta("a", 1, 0, "You see "));
  t.delta(delta("a", 1, 2, "cave."));
  assert.equal(t.turns[0]!.reply, "You see ", "only the prefix without holes");
  t.delta(delta("a", 1, 1, "a "));
  assert.equal(t.turns[0]!.reply, "You see a cave.");
  t.event(ev("turn.completed", { turn_id: "a", seq: 1, output: "You see a cave." }));
  assert.deepEqual(
    t.turns.map((x) => [x.author, x.status, x.reply]),
    [
      ["alice", "completed", "You see a cave."],
      ["bob", "queued", ""],
    ],
  );
  // Chunks after completion change nothing.
  assert.equal(t.delta(delta("a", 1, 3, "!")), false);
});

test("a retried turn drops what its earlier attempt showed", () => {
  const t = new Transcript();
  t.event(ev("turn.queued", { turn_id: "a", seq: 1, author_user_id: "alice", input: "x" }));
  t.event(ev("turn.started", { turn_id: "a", seq: 1, attempt: 1 }));
  t.delta(delta("a", 1, 0, "half a rep"));
  t.event(ev("turn.retrying", { turn_id: "a", seq: 1, error: "the provider answered 500" }));
  assert.equal(t.turns[0]!.reply, "");
  assert.equal(t.turns[0]!.status, "retrying");
  // A late chunk of the old attempt is not shown.
  assert.equal(t.delta(delta("a", 1, 1, "ly")), false);
  t.delta(delta("a", 2, 0, "A whole reply"));
  t.event(ev("turn.started", { turn_id: "a", seq: 1, attempt: 2 }));
  assert.equal(t.turns[0]!.reply, "A whole reply");
  t.event(ev("turn.failed", { turn_id: "a", seq: 1, error: "gave up" }));
  assert.equal(t.turns[0]!.status, "failed");
  assert.equal(t.turns[0]!.error, "gave up");
});

test("turns read over REST are the start events continue from", () => {
  const t = new Transcript();
  t.load({
    turn_id: "a",
    seq: 1,
    author_user_id: "alice",
    status: "running",
    input: "I wait.",
    output: null,
    error: null,
    job_id: "j",
    created_at: "",
  });
  t.event(ev("turn.started", { turn_id: "a", seq: 1, attempt: 1 }));
  t.delta(delta("a", 1, 0, "Time passes."));
  assert.deepEqual(
    t.turns.map((x) => [x.author, x.input, x.status, x.reply]),
    [["alice", "I wait.", "running", "Time passes."]],
  );
});

test("a reply whose images were skipped for the media quota says so", () => {
  const t = new Transcript();
  t.event(ev("turn.queued", { turn_id: "a", seq: 1, author_user_id: "alice", input: "I look." }));
  t.event(ev("turn.completed", { turn_id: "a", seq: 1, output: "A hall." }));
  const note = "Images are off for this reply: you may ask for 2 images or narrations an hour.";
  assert.equal(t.event(ev("media.skipped", { turn_id: "a", skipped: 1, message: note })), true);
  assert.equal(t.turns[0]!.mediaNote, note);
  assert.equal(t.event(ev("media.skipped", { turn_id: "unknown", skipped: 1, message: note })), false);
  assert.equal(t.event(ev("media.requested", { turn_id: "a", media_id: "m" })), false);
});
