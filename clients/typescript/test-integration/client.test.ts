/**
 * The client against a real questboard (`questboard dev`, fresh database,
 * real Redis): the socket resumes after a disconnect with every event once
 * and in order, the transcript assembles the streamed replies the server
 * recorded, the store follows game masters' updates and handles a conflict
 * as it promises, and a removed member's socket ends.
 */

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import type { SessionEvent } from "../src/events.js";
import { SessionSocket, type CloseReason, type WebSocketLike } from "../src/socket.js";
import { GameStateStore, VersionConflict, snapshotOf } from "../src/store.js";
import { Transcript } from "../src/transcript.js";
import { restClient } from "../src/rest.js";
import { generatedTypes } from "./openapi.js";
import { Questboard, until } from "./questboard.js";

let qb: Questboard;

before(async () => {
  qb = await Questboard.start();
});

after(async () => {
  await qb?.stop();
});

/** A WebSocket whose connections a test can cut (a client-side close with
 * an application code: the server echoes it, as a dropped network would
 * end the socket without a final close). */
function cuttable(): { WebSocket: WebSocketLike; cut: () => void } {
  const open: WebSocket[] = [];
  class Cuttable extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      open.push(this);
    }
  }
  return {
    WebSocket: Cuttable,
    cut: () => {
      for (const ws of open.splice(0)) ws.close(4999, "cut by the test");
    },
  };
}

interface Watch {
  socket: SessionSocket;
  events: SessionEvent[];
  transcript: Transcript;
  closes: CloseReason[];
  deltas: number;
}

function watch(user: string, session: string, WebSocketImpl?: WebSocketLike): Watch {
  const w: Partial<Watch> = { events: [], transcript: new Transcript(), closes: [], deltas: 0 };
  w.socket = new SessionSocket({
    baseUrl: qb.baseUrl,
    sessionId: session,
    token: () => qb.token(user),
    backoff: { initialMs: 50, maxMs: 200 },
    ...(WebSocketImpl ? { WebSocket: WebSocketImpl } : {}),
    onEvent: (e) => {
      w.events!.push(e);
      w.transcript!.event(e);
    },
    onDelta: (d) => {
      if (w.transcript!.delta(d)) w.deltas! += 1;
    },
    onClose: (why) => w.closes!.push(why),
  });
  return w as Watch;
}

async function submit(user: string, session: string, text: string): Promise<void> {
  const resp = await qb.call(user, "POST", `/api/sessions/${session}/turns`, { text });
  assert.equal(resp.status, 202, JSON.stringify(resp.body));
}

async function restEvents(user: string, session: string): Promise<SessionEvent[]> {
  const resp = await qb.call(user, "GET", `/api/sessions/${session}/events?after_seq=0&limit=1000`);
  assert.equal(resp.status, 200);
  return resp.body.events;
}

test("a socket cut mid-game resumes with every event once, in order, and the replies whole", async () => {
  const session = await qb.session("alice", "Resume", ["bob"]);
  const net = cuttable();
  const bob = watch("bob", session, net.WebSocket);
  await until("bob connected", () => bob.socket.open);
  await submit("alice", session, "I open the door.");
  await submit("bob", session, "I follow.");
  await until("two replies", () => bob.transcript.turns.filter((t) => t.status === "completed").length === 2);
  net.cut();
  await submit("alice", session, "We go down the stairs.");
  await submit("alice", session, "I light a torch.");
  await until("four replies", () => bob.transcript.turns.filter((t) => t.status === "completed").length === 4);
  assert.ok(
    bob.closes.some((c) => c.kind === "connection_lost" && c.reconnecting),
    JSON.stringify(bob.closes),
  );
  const seqs = bob.events.map((e) => e.seq);
  assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), "once each, in order");
  const stored = await restEvents("alice", session);
  assert.deepEqual(seqs, stored.map((e) => e.seq), "exactly the durable log");
  const turns = await qb.call("alice", "GET", `/api/sessions/${session}/turns`);
  assert.deepEqual(
    bob.transcript.turns.map((t) => [t.author, t.input, t.reply]),
    turns.body.turns.map((t: any) => [t.author_user_id, t.input, t.output]),
  );
  assert.ok(bob.deltas > 0, "replies were streamed");
  bob.socket.close();
});

test("game masters' updates reach a player; a stale one is a conflict the store recovers from", async () => {
  const session = await qb.session("alice", "State", ["bob"], ["carol"]);
  const alice = watch("alice", session);
  const bob = watch("bob", session);
  const carol = watch("carol", session);
  await until("sockets open", () => alice.socket.open && bob.socket.open && carol.socket.open);
  const store = (w: Watch) =>
    new GameStateStore({
      fetch: async () => snapshotOf(await w.socket.request("state.get")),
      requester: w.socket,
    });
  const a = store(alice);
  const b = store(bob);
  const c = store(carol);
  await Promise.all([a.load(), b.load(), c.load()]);
  // Feed alice's and bob's stores from their sockets; carol's store is not
  // fed, so it stays at the version it loaded.
  let fedA = 0;
  let fedB = 0;
  const feed = setInterval(() => {
    for (; fedA < alice.events.length; fedA++) a.event(alice.events[fedA]!);
    for (; fedB < bob.events.length; fedB++) b.event(bob.events[fedB]!);
  }, 10);
  try {
    assert.equal(await a.update([{ path: "characters", operation: "push", value: { name: "Ayla", hp: 10 } }]), 1);
    assert.equal(await a.update([{ path: "characters.0.hp", operation: "inc", value: -3 }]), 2);
    await until("bob's store at version 2", () => b.current?.version === 2);
    assert.deepEqual(b.current?.state["characters"], [{ name: "Ayla", hp: 7 }]);
    // Carol's store still believes version 0: her update is a conflict; the
    // store refetches and says so, and her next update goes through.
    await assert.rejects(
      c.update([{ path: "items", operation: "push", value: "rope" }]),
      (e: unknown) => e instanceof VersionConflict && e.currentVersion === 2,
    );
    assert.equal(c.current?.version, 2);
    assert.equal(await c.update([{ path: "items", operation: "push", value: "rope" }]), 3);
    await until("bob's store at version 3", () => b.current?.version === 3);
    const server = await qb.call("bob", "GET", `/api/sessions/${session}/state`);
    assert.deepEqual(b.current, snapshotOf(server.body), "the player's copy is the server's");
  } finally {
    clearInterval(feed);
    for (const w of [alice, bob, carol]) w.socket.close();
  }
});

test("a removed member's socket ends and does not come back", async () => {
  const session = await qb.session("alice", "Removal", ["bob"]);
  const bob = watch("bob", session);
  await until("bob connected", () => bob.socket.open);
  const removed = await qb.call("alice", "DELETE", `/api/sessions/${session}/members/bob`);
  assert.equal(removed.status, 204, JSON.stringify(removed.body));
  await until("bob's socket closed", () => bob.closes.length > 0);
  assert.deepEqual(
    bob.closes.map((c) => [c.kind, c.code, c.reconnecting]),
    [["access_ended", 4003, false]],
  );
  await submit("alice", session, "A secret plan.");
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(!bob.socket.open);
  assert.ok(!bob.transcript.turns.some((t) => t.input === "A secret plan."));
});

test("the REST types are exactly what the server describes", async () => {
  const committed = readFileSync(fileURLToPath(new URL("../../src/api.ts", import.meta.url)), "utf8");
  const served = await generatedTypes(qb.baseUrl);
  assert.ok(
    served === committed,
    "src/api.ts differs from the served OpenAPI description: run `npm run generate` and commit it",
  );
});

test("typed REST calls create, list and play a session with the caller's token", async () => {
  const api = restClient({ baseUrl: qb.baseUrl, token: () => qb.token("dana") });
  const created = await api.POST("/api/sessions", { body: { name: "Typed" } });
  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  const id = created.data!.session_id;
  const listed = await api.GET("/api/sessions", { params: { query: { limit: 10 } } });
  assert.deepEqual(
    listed.data!.sessions.map((s) => s.name),
    ["Typed"],
  );
  const turn = await api.POST("/api/sessions/{session_id}/turns", {
    params: { path: { session_id: id } },
    body: { text: "Hello" },
  });
  assert.equal(turn.response.status, 202, JSON.stringify(turn.error));
  // Someone else's token sees nothing of it: the error is typed too.
  const stranger = restClient({ baseUrl: qb.baseUrl, token: () => qb.token("eve") });
  const denied = await stranger.GET("/api/sessions/{session_id}", { params: { path: { session_id: id } } });
  assert.equal(denied.response.status, 404);
  assert.equal(denied.error?.error.code, "not_found");
});
