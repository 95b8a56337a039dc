import { test } from "node:test";
import assert from "node:assert/strict";

import { applyAll, emptyState, OperationError, deepEqual, type JsonObject } from "../src/ops.js";

function state(extra: JsonObject = {}): JsonObject {
  return { ...emptyState(), ...extra };
}

test("set creates missing objects and replaces what is there", () => {
  const s = applyAll(state(), [
    { path: "pluginData.dice.last", operation: "set", value: 20 },
    { path: "currentEncounter", operation: "set", value: { map: "Crypt" } },
    { path: "currentEncounter.map", operation: "set", value: "Tower" },
  ]);
  assert.deepEqual(s["pluginData"], { dice: { last: 20 } });
  assert.deepEqual(s["currentEncounter"], { map: "Tower" });
});

test("an index past the end is refused for set, and push appends", () => {
  const s = state({ characters: [{ name: "Ayla" }] });
  assert.throws(
    () => applyAll(s, [{ path: "characters.1", operation: "set", value: {} }]),
    (e: unknown) => e instanceof OperationError && e.operation === 0,
  );
  const pushed = applyAll(s, [{ path: "characters", operation: "push", value: { name: "Bo" } }]);
  assert.equal((pushed["characters"] as JsonObject[]).length, 2);
});

test("unset removes array elements, shifting later ones, and empties top-level keys", () => {
  const s = state({ items: ["a", "b", "c"], pluginData: { x: 1 } });
  const next = applyAll(s, [
    { path: "items.1", operation: "unset" },
    { path: "pluginData", operation: "unset" },
    { path: "pluginData.missing.deep", operation: "unset" },
  ]);
  assert.deepEqual(next["items"], ["a", "c"]);
  assert.deepEqual(next["pluginData"], {});
});

test("inc adds, creates, and refuses what is not a number", () => {
  const s = state({ characters: [{ hp: 10 }] });
  const next = applyAll(s, [
    { path: "characters.0.hp", operation: "inc", value: -3 },
    { path: "characters.0.xp", operation: "inc", value: 5 },
  ]);
  assert.deepEqual(next["characters"], [{ hp: 7, xp: 5 }]);
  assert.throws(() => applyAll(s, [{ path: "characters", operation: "inc", value: 1 }]), OperationError);
  assert.throws(() => applyAll(s, [{ path: "characters.0.hp", operation: "inc", value: "1" }]), OperationError);
});

test("pull removes deep-equal elements regardless of key order", () => {
  const s = state({ items: [{ a: 1, b: 2 }, { b: 2, a: 1 }, { a: 2 }] });
  const next = applyAll(s, [{ path: "items", operation: "pull", value: { b: 2, a: 1 } }]);
  assert.deepEqual(next["items"], [{ a: 2 }]);
  assert.ok(deepEqual({ a: [1, { b: null }] }, { a: [1, { b: null }] }));
  assert.ok(!deepEqual({ a: 1 }, { a: 1, b: 1 }));
});

test("a digit segment is a key in an object and an index in an array", () => {
  const s = applyAll(state(), [{ path: "pluginData.0", operation: "set", value: "zero" }]);
  assert.deepEqual(s["pluginData"], { "0": "zero" });
});

test("hostile paths are refused, the prototype never touched", () => {
  for (const path of [
    "pluginData.__proto__.polluted",
    "pluginData.constructor",
    "stateVersion",
    "nothing",
    "pluginData..x",
    "pluginData.a b",
    "",
  ]) {
    assert.throws(() => applyAll(state(), [{ path, operation: "set", value: 1 }]), OperationError, path);
  }
  assert.equal(({} as Record<string, unknown>)["polluted"], undefined);
});

test("all or none: a refused operation leaves the state as it was", () => {
  const s = state({ items: [1] });
  assert.throws(() =>
    applyAll(s, [
      { path: "items", operation: "push", value: 2 },
      { path: "items", operation: "inc", value: 1 },
    ]),
  );
  assert.deepEqual(s["items"], [1]);
});

test("top-level keys keep their types", () => {
  assert.throws(() => applyAll(state(), [{ path: "characters", operation: "set", value: {} }]), OperationError);
  const s = applyAll(state(), [{ path: "currentEncounter", operation: "set", value: null }]);
  assert.equal(s["currentEncounter"], null);
});
