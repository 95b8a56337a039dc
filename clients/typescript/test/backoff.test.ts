import { test } from "node:test";
import assert from "node:assert/strict";

import { Backoff } from "../src/backoff.js";
import { closeKind } from "../src/socket.js";

test("delays grow to their cap with full jitter and start again after a success", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999 });
  const delays = Array.from({ length: 6 }, () => b.next());
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  b.reset();
  assert.equal(b.next(), 99);
  const low = new Backoff({ initialMs: 100, random: () => 0 });
  assert.equal(low.next(), 0);
});

test("close codes are typed reasons", () => {
  assert.equal(closeKind(4003), "access_ended");
  assert.equal(closeKind(4001), "token_expired");
  assert.equal(closeKind(4008), "fell_behind");
  assert.equal(closeKind(4000), "no_pong");
  assert.equal(closeKind(1006), "connection_lost");
  assert.equal(closeKind(1009), "protocol_error");
});
