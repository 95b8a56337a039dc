import assert from "node:assert/strict";
import { test } from "node:test";
import { SessionSocket, type CloseReason, type Connectivity } from "../src/socket.js";

/** A WebSocket stand-in that records what happens to it. */
class FakeSocket {
  static made: FakeSocket[] = [];
  readyState = 0;
  closedWith: number | undefined;
  onopen: (() => void) | undefined;
  onclose: ((e: { code: number; reason: string }) => void) | undefined;
  onmessage: ((e: { data: string }) => void) | undefined;
  constructor(
    readonly url: string,
    readonly protocols?: string[],
  ) {
    FakeSocket.made.push(this);
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.();
  }
  send(): void {}
  close(code: number): void {
    this.closedWith = code;
    this.readyState = 3;
  }
}

function network(): Connectivity & { set(online: boolean): void } {
  let online = true;
  const back = new Set<() => void>();
  const gone = new Set<() => void>();
  return {
    isOnline: () => online,
    onOnline: (f) => (back.add(f), () => back.delete(f)),
    onOffline: (f) => (gone.add(f), () => gone.delete(f)),
    set(now: boolean) {
      online = now;
      for (const f of now ? back : gone) f();
    },
  };
}

test("going offline closes the socket at once, and coming back connects after the last event", async () => {
  FakeSocket.made = [];
  const net = network();
  const closes: CloseReason[] = [];
  const open: boolean[] = [];
  const socket = new SessionSocket({
    baseUrl: "http://qb.test",
    sessionId: "s1",
    token: () => "t",
    connectivity: net,
    WebSocket: FakeSocket as unknown as new (url: string, protocols?: string | string[]) => WebSocket,
    onClose: (r) => closes.push(r),
    onConnection: (o) => open.push(o),
  });
  await new Promise((r) => setTimeout(r, 0));
  const first = FakeSocket.made[0]!;
  // The token travels as a subprotocol, never in the URL.
  assert.deepEqual(first.protocols, ["questboard.bearer", "t"]);
  assert.equal(first.url, "ws://qb.test/ws/sessions/s1?after_seq=0");
  first.open();
  first.onmessage?.({ data: JSON.stringify({ seq: 7, type: "turn.queued", session_id: "s1", at: "", data: {} }) });
  const pending = socket.request("state.get");

  net.set(false);
  assert.equal(first.closedWith, 1000);
  assert.deepEqual(open, [true, false]);
  assert.equal(closes.at(-1)?.kind, "offline");
  assert.equal(closes.at(-1)?.reconnecting, true);
  await assert.rejects(pending, { name: "Disconnected" });
  // The socket's own late close event changes nothing.
  first.onclose?.({ code: 1006, reason: "" });
  assert.equal(closes.length, 1);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(FakeSocket.made.length, 1, "no reconnect while offline");

  net.set(true);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(FakeSocket.made.length, 2);
  assert.match(FakeSocket.made[1]!.url, /after_seq=7$/);
  socket.close();
});
