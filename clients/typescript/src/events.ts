/**
 * What arrives on a session socket: durable events (with a `seq`),
 * ephemeral `turn.delta` chunks, and the server's notices (`reset`,
 * `resync`, request replies). Shapes as documented in
 * `docs/architecture.md`, "Session events and realtime delivery".
 */

import type { Json, JsonObject, StateOperation } from "./ops.js";

/** A durable session event. */
export interface SessionEvent {
  seq: number;
  type: string;
  session_id: string;
  at: string;
  data: JsonObject;
}

/** A chunk of a reply being written. */
export interface TurnDelta {
  type: "turn.delta";
  session_id: string;
  turn_id: string;
  /** Counts from 1; a retried turn streams again from index 0. */
  attempt: number;
  /** The seq of that attempt's `turn.started`. */
  started_seq: number;
  index: number;
  text: string;
}

/** Events were pruned: the log starts later than the client asked. */
export interface ResetNotice {
  type: "reset";
  reason: string;
  /** The newest seq now: resume after it once the state is refetched. */
  seq: number;
  pruned_through: number;
}

/** The live feed had a gap; what was missed follows, in order. */
export interface ResyncNotice {
  type: "resync";
  reason: string;
  after_seq: number;
}

/** The answer to a request sent on the socket. */
export interface Reply {
  type: "reply";
  request_id: string | number | null;
  ok: boolean;
  error?: { code: string; message: string; current_version?: number; operation?: number };
  [key: string]: Json | undefined;
}

/** The data of a `state.updated` event. */
export interface StateUpdated {
  update_id: string;
  version: number;
  base_version?: number;
  operations: StateOperation[];
  source: "gm" | "system";
  by: string;
}

/** Anything a socket delivers. */
export type Incoming = SessionEvent | TurnDelta | ResetNotice | ResyncNotice | Reply;

/** Tells the kinds of incoming messages apart. */
export function isEvent(message: Incoming): message is SessionEvent {
  return typeof (message as SessionEvent).seq === "number" && "data" in message;
}
