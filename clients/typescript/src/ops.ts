/**
 * The game-state operations, applied exactly as the server applies them
 * (`core/src/state/ops.rs` is the reference; the operations table is in
 * `docs/architecture.md`, "The game state"). A client applies the
 * operations of each `state.updated` event it receives to its copy of the
 * state, so the two must agree; the integration tests compare them.
 */

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
/** A JSON object. */
export type JsonObject = { [key: string]: Json };

/** What an operation does. */
export type OperationKind = "set" | "unset" | "inc" | "push" | "pull";

/** One operation, as sent and as carried by `state.updated`. */
export interface StateOperation {
  path: string;
  operation: OperationKind;
  value?: Json;
}

/** The most segments a path may have. */
export const MAX_DEPTH = 32;
/** The longest segment, in characters. */
export const MAX_SEGMENT_CHARS = 64;

type Shape = "array" | "object" | "objectOrNull";
const TOP_LEVEL: ReadonlyArray<[string, Shape]> = [
  ["characters", "array"],
  ["actors", "array"],
  ["items", "array"],
  ["currentEncounter", "objectOrNull"],
  ["pluginData", "object"],
];
const SERVER_OWNED = ["stateVersion", "lastUpdated"];
const FORBIDDEN_SEGMENTS = ["__proto__", "constructor", "prototype"];
const SEGMENT = /^[A-Za-z0-9_-]+$/;

/** An operation the state refuses, with why (the server's words). */
export class OperationError extends Error {
  /** The index of the operation in its update, when one is to blame. */
  readonly operation: number | undefined;
  constructor(message: string, operation?: number) {
    super(message);
    this.name = "OperationError";
    this.operation = operation;
  }
}

interface Segment {
  key: string;
  index: number | undefined;
}

function emptyOf(shape: Shape): Json {
  switch (shape) {
    case "array":
      return [];
    case "object":
      return {};
    case "objectOrNull":
      return null;
  }
}

/** The state of a new session: every top-level key empty. */
export function emptyState(): JsonObject {
  const state: JsonObject = {};
  for (const [key, shape] of TOP_LEVEL) state[key] = emptyOf(shape);
  return state;
}

function asIndex(part: string): number | undefined {
  if (!/^[0-9]+$/.test(part) || (part.length > 1 && part.startsWith("0")) || part.length > 9) {
    return undefined;
  }
  return Number(part);
}

function parsePath(text: string): Segment[] {
  if (text === "") throw new OperationError("the path is empty");
  const parts = text.split(".");
  if (parts.length > MAX_DEPTH) {
    throw new OperationError(`the path has more than ${MAX_DEPTH} segments`);
  }
  const segments = parts.map((part, i): Segment => {
    if (part === "") throw new OperationError(`segment ${i} of the path is empty`);
    if ([...part].length > MAX_SEGMENT_CHARS) {
      throw new OperationError(
        `segment ${i} of the path is longer than ${MAX_SEGMENT_CHARS} characters`,
      );
    }
    if (!SEGMENT.test(part)) {
      throw new OperationError(
        `segment ${i} of the path has a character other than A-Z, a-z, 0-9, '_' and '-'`,
      );
    }
    if (FORBIDDEN_SEGMENTS.includes(part)) {
      throw new OperationError(
        `segment ${i} of the path is \`${part}\`, which is refused: it names the prototype of JavaScript objects`,
      );
    }
    return { key: part, index: asIndex(part) };
  });
  const first = segments[0]!.key;
  if (SERVER_OWNED.includes(first)) {
    throw new OperationError(`\`${first}\` is kept by the server and cannot be written`);
  }
  if (!TOP_LEVEL.some(([key]) => key === first)) {
    throw new OperationError(
      "the path must start with one of characters, actors, items, currentEncounter, pluginData",
    );
  }
  return segments;
}

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function has(object: JsonObject, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(object, key);
}

function typeName(value: Json | undefined): string {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "boolean":
      return "a boolean";
    case "number":
      return "a number";
    case "string":
      return "a string";
    default:
      return "an object";
  }
}

/** Deep equality as the server's `pull` decides it: objects by fields
 * regardless of key order, numbers by value. */
export function deepEqual(a: Json, b: Json): boolean {
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => deepEqual(item, b[i]!))
    );
  }
  if (isObject(a) || isObject(b)) {
    if (!isObject(a) || !isObject(b)) return false;
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length &&
      keys.every((k) => has(b, k) && deepEqual(a[k]!, b[k]!))
    );
  }
  return a === b;
}

function combine(
  container: JsonObject | Json[],
  key: string | number,
  kind: OperationKind,
  value: Json,
): void {
  const target = (container as Record<string | number, Json>)[key]!;
  switch (kind) {
    case "inc": {
      if (typeof target !== "number" || typeof value !== "number") {
        throw new OperationError(`\`inc\` needs a number at the path, found ${typeName(target)}`);
      }
      const sum = target + value;
      if (!Number.isFinite(sum)) throw new OperationError("`inc` would make the number non-finite");
      (container as Record<string | number, Json>)[key] = sum;
      return;
    }
    case "push":
      if (!Array.isArray(target)) {
        throw new OperationError(`\`push\` needs an array at the path, found ${typeName(target)}`);
      }
      target.push(value);
      return;
    case "pull":
      if (!Array.isArray(target)) {
        throw new OperationError(`\`pull\` needs an array at the path, found ${typeName(target)}`);
      }
      (container as Record<string | number, Json>)[key] = target.filter(
        (item) => !deepEqual(item, value),
      );
      return;
    default:
      return;
  }
}

/** Follows `segments` from `root`; creates missing objects when `create`.
 * Returns the value the last segment lives in, or undefined when a parent
 * is missing (and nothing is to be created). */
function walk(root: Json, segments: Segment[], create: boolean): Json | undefined {
  let here: Json = root;
  for (const [depth, segment] of segments.entries()) {
    const where = segments
      .slice(0, depth)
      .map((s) => s.key)
      .join(".");
    if (isObject(here)) {
      if (!has(here, segment.key)) {
        if (!create) return undefined;
        here[segment.key] = {};
      }
      here = here[segment.key]!;
    } else if (Array.isArray(here)) {
      const len = here.length;
      if (segment.index !== undefined && segment.index < len) {
        here = here[segment.index]!;
      } else if (segment.index !== undefined) {
        if (!create) return undefined;
        throw new OperationError(
          `index ${segment.index} is past the end of the array at \`${where}\` (length ${len})`,
        );
      } else {
        if (!create) return undefined;
        throw new OperationError(`\`${segment.key}\` is not an index, but \`${where}\` is an array`);
      }
    } else {
      if (!create) return undefined;
      throw new OperationError(
        `cannot create \`${segment.key}\` inside ${typeName(here)} at \`${where}\``,
      );
    }
  }
  return here;
}

function put(parent: Json, last: Segment, value: Json, path: string): void {
  if (isObject(parent)) {
    parent[last.key] = value;
  } else if (Array.isArray(parent)) {
    if (last.index === undefined) {
      throw new OperationError(`\`${last.key}\` is not an index into the array in \`${path}\``);
    }
    if (last.index >= parent.length) {
      throw new OperationError(
        `index ${last.index} is past the end of the array (length ${parent.length}) in \`${path}\`; use \`push\` to append`,
      );
    }
    parent[last.index] = value;
  } else {
    throw new OperationError(`cannot create \`${last.key}\` inside ${typeName(parent)}`);
  }
}

/** Applies one operation to `state` in place. */
export function apply(state: JsonObject, op: StateOperation): void {
  const segments = parsePath(op.path);
  const kind = op.operation;
  if (!["set", "unset", "inc", "push", "pull"].includes(kind)) {
    throw new OperationError(`unknown operation \`${String(kind)}\``);
  }
  if (kind !== "unset" && op.value === undefined) {
    throw new OperationError(`\`${kind}\` needs a \`value\``);
  }
  if (kind === "inc" && typeof op.value !== "number") {
    throw new OperationError("`inc` needs a number as its `value`");
  }
  const value = structuredClone(op.value ?? null);
  const last = segments[segments.length - 1]!;
  if (segments.length === 1) {
    const shape = TOP_LEVEL.find(([key]) => key === last.key)![1];
    if (kind === "set") state[last.key] = value;
    else if (kind === "unset") state[last.key] = emptyOf(shape);
    else {
      if (!has(state, last.key)) state[last.key] = emptyOf(shape);
      combine(state, last.key, kind, value);
    }
    return;
  }
  const creates = kind === "set" || kind === "inc" || kind === "push";
  const parent = walk(state, segments.slice(0, -1), creates);
  // A missing parent: unset and pull have nothing to do.
  if (parent === undefined) return;
  if (kind === "set") return put(parent, last, value, op.path);
  if (kind === "unset") {
    if (isObject(parent)) delete parent[last.key];
    else if (Array.isArray(parent) && last.index !== undefined && last.index < parent.length) {
      parent.splice(last.index, 1);
    }
    return;
  }
  // inc, push, pull: the slot the last segment names. A path through a
  // scalar, or a key into an array, does not exist: `pull` has nothing to
  // do, the others cannot create it.
  let exists: boolean;
  let key: string | number;
  if (isObject(parent)) {
    exists = has(parent, last.key);
    key = last.key;
  } else if (Array.isArray(parent) && last.index !== undefined) {
    exists = last.index < parent.length;
    key = last.index;
  } else {
    if (kind === "pull") return;
    throw new OperationError(
      Array.isArray(parent)
        ? `\`${last.key}\` is not an index into the array at \`${op.path}\``
        : `cannot reach \`${last.key}\` inside ${typeName(parent)}`,
    );
  }
  if (exists) return combine(parent, key, kind, value);
  if (kind === "inc") return put(parent, last, value, op.path);
  if (kind === "push") return put(parent, last, [value], op.path);
}

/** Checks the top-level keys and their types, as the server does after
 * each update. */
export function checkStructure(state: JsonObject): void {
  for (const [key, shape] of TOP_LEVEL) {
    if (!has(state, key)) throw new OperationError(`\`${key}\` is missing`);
    const value = state[key]!;
    const ok =
      shape === "array"
        ? Array.isArray(value)
        : shape === "object"
          ? isObject(value)
          : isObject(value) || value === null;
    if (!ok) {
      throw new OperationError(`\`${key}\` must be ${shape}, not ${typeName(value)}`);
    }
  }
  const extra = Object.keys(state).find((k) => !TOP_LEVEL.some(([key]) => key === k));
  if (extra !== undefined) throw new OperationError(`unknown top-level key \`${extra}\``);
}

/** Applies `ops` in order to a copy of `state`: all or none. Returns the
 * new state; throws an {@link OperationError} naming the operation. */
export function applyAll(state: JsonObject, ops: readonly StateOperation[]): JsonObject {
  const next = structuredClone(state);
  ops.forEach((op, i) => {
    try {
      apply(next, op);
    } catch (err) {
      if (err instanceof OperationError) throw new OperationError(err.message, i);
      throw err;
    }
  });
  checkStructure(next);
  return next;
}
