import { test } from "node:test";
import assert from "node:assert/strict";

import type { Reply, SessionEvent } from "../src/events.js";
import { emptyState, type Json, type JsonObject } from "../src/ops.js";
import { Disconnected } from "../src/socket.js";
import { GameStateStore, VersionConflict, snapshotOf, type StateSnapshot } from "../src/store.js";

/** A server holding the true state: answers fetches and updates as
 * questboard does (version check, ids remembered). */
class Server {
  state: JsonObject = emptyState();
  version = 0;
  fetches = 0;
  seen = new Map<string, Reply>();
  disconnectNext = 0;
  applied: Array<{ version: number; operations: Json }> = [];

  snapshot(): StateSnapshot {
    this.fetches += 1;
    return { state: structuredClone(this.state), version: this.version };
  }

  async request(type: string, body: Record<string, Json> = {}): Promise<Reply> {
    assert.equal(type, "state.update");
    const id = String(body["id"]);
    if (this.disconnectNext > 0) {
      this.disconnectNext -= 1;
      // The update was applied, but the reply was lost with the socket.
      this.answer(id, body);
      throw new Disconnected();
    }
    return this.answer(id, body);
  }

  private answer(id: string, body: Record<string, Json>): Reply {
    const seen = this.seen.get(id);
    if (seen) return seen;
    if (body["version"] !== this.version) {
      return {
        type: "reply",
        request_id: "r",
        ok: false,
        error: { code: "VERSION_CONFLICT", message: "moved on", current_version: this.version },
      };
    }
    const ops = body["operations"] as unknown as { path: string; operation: "push"; value: Json }[];
    for (const op of ops) (this.state[op.path.split(".")[0]!] as Json[]).push(op.value);
    this.version += 1;
    this.applied.push({ version: this.version, operations: body["operations"]! });
    const reply: Reply = { type: "reply", request_id: "r", ok: true, new_version: this.version };
    this.seen.set(id, reply);
    return reply;
  }
}

function updated(version: number, operations: Json): SessionEvent {
  return {
    seq: version + 100,
    type: "state.updated",
    session_id: "s",
    at: "",
    data: { version, operations, source: "gm", by: "alice", update_id: "u" },
  };
}

let ids = 0;
function store(server: Server): GameStateStore {
  return new GameStateStore({
    fetch: async () => server.snapshot(),
    requester: server,
    newId: () => `id-${++ids}`,
    resendDelayMs: 1,
  });
}

test("a player applies the next version, ignores old ones and refetches after a gap", async () => {
  const server = new Server();
  const s = store(server);
  await s.load();
  s.event(updated(1, [{ path: "items", operation: "push", value: "sword" }]));
  assert.deepEqual(s.current?.state["items"], ["sword"]);
  s.event(updated(1, [{ path: "items", operation: "push", value: "sword" }]));
  assert.deepEqual(s.current?.state["items"], ["sword"], "an old version is ignored");
  server.state["items"] = ["sword", "a", "b"];
  server.version = 3;
  const before = server.fetches;
  s.event(updated(3, [{ path: "items", operation: "push", value: "b" }]));
  await s.load();
  assert.equal(server.fetches, before + 1, "a gap refetches the whole state");
  assert.deepEqual(s.current, { state: { ...emptyState(), items: ["sword", "a", "b"] }, version: 3 });
});

test("a game master's updates go one at a time and apply once confirmed", async () => {
  const server = new Server();
  const s = store(server);
  await s.load();
  const first = s.update([{ path: "items", operation: "push", value: 1 }]);
  const second = s.update([{ path: "items", operation: "push", value: 2 }]);
  assert.equal(s.queued, 2);
  assert.deepEqual(await Promise.all([first, second]), [1, 2]);
  assert.deepEqual(s.current?.state["items"], [1, 2]);
  assert.deepEqual(server.applied.map((a) => a.version), [1, 2]);
  // The events arriving afterwards change nothing.
  s.event(updated(1, [{ path: "items", operation: "push", value: 1 }]));
  s.event(updated(2, [{ path: "items", operation: "push", value: 2 }]));
  assert.deepEqual(s.current?.state["items"], [1, 2]);
});

test("a conflict refetches and tells the caller; the next update goes on", async () => {
  const server = new Server();
  const s = store(server);
  await s.load();
  // Another game master moved the state on.
  server.state["items"] = ["theirs"];
  server.version = 1;
  await assert.rejects(
    s.update([{ path: "items", operation: "push", value: "mine" }]),
    (e: unknown) => e instanceof VersionConflict && e.currentVersion === 1,
  );
  assert.deepEqual(s.current?.state["items"], ["theirs"]);
  assert.equal(await s.update([{ path: "items", operation: "push", value: "again" }]), 2);
  assert.deepEqual(s.current?.state["items"], ["theirs", "again"]);
});

test("an update whose reply was lost is resent with its id and applied once", async () => {
  const server = new Server();
  const s = store(server);
  await s.load();
  server.disconnectNext = 1;
  assert.equal(await s.update([{ path: "items", operation: "push", value: "once" }]), 1);
  assert.deepEqual(server.state["items"], ["once"]);
  assert.deepEqual(s.current?.state["items"], ["once"]);
});

test("a snapshot leaves out what the server keeps in the document", () => {
  const view = {
    version: 7,
    state: { ...emptyState(), stateVersion: 7, lastUpdated: "2026-12-06T00:00:00Z" },
  };
  assert.deepEqual(snapshotOf(view), { state: emptyState(), version: 7 });
});

test("an update that never finds a connection is given up with Disconnected, and the next one goes", async () => {
  const server = new Server();
  let down = true;
  const s = new GameStateStore({
    fetch: async () => server.snapshot(),
    requester: {
      request: (type, body) => (down ? Promise.reject(new Disconnected()) : server.request(type, body)),
    },
    newId: () => `id-${++ids}`,
    resendDelayMs: 2,
    giveUpAfterMs: 30,
  });
  await s.load();
  const first = s.update([{ path: "items", operation: "push", value: "rope" }]);
  const second = s.update([{ path: "items", operation: "push", value: "torch" }]);
  await assert.rejects(first, { name: "Disconnected" });
  down = false;
  assert.equal(await second, 1);
  assert.deepEqual(server.state["items"], ["torch"]);
  assert.deepEqual(s.current?.state["items"], ["torch"]);
});
