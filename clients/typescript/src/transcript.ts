/**
 * A session's transcript as a player sees it: turns in order, each with
 * who wrote it, its status, and the reply as far as it has been written.
 * Built from durable events (`turn.queued` ... `turn.completed`) and the
 * `turn.delta` chunks between them. A retried turn streams again under
 * its next attempt: what was shown of the earlier attempt is dropped. Pure
 * logic: feed it what the socket delivers, read `turns`.
 */

import type { components } from "./api.js";
import type { SessionEvent, TurnDelta } from "./events.js";
import type { JsonObject } from "./ops.js";

/** Where a turn is. */
export type TurnStatus = "queued" | "running" | "retrying" | "completed" | "failed";

/** One turn and its reply. */
export interface TranscriptTurn {
  turnId: string;
  /** Its place in the session (1, 2, ...). */
  seq: number;
  author: string;
  input: string;
  status: TurnStatus;
  /** The reply: complete once `status` is `completed`, partial while running. */
  reply: string;
  /** The attempt being streamed (0 before the first start). */
  attempt: number;
  /** Why it failed or is retrying. */
  error?: string;
  /** What the reply changed in the game state, as `turn.completed` says. */
  stateChange?: JsonObject;
  /** Why images the reply asked for were not made (`media.skipped`: the
   * author's media quota was spent; the reply goes on in text). */
  mediaNote?: string;
}

interface Chunks {
  attempt: number;
  parts: string[];
}

/** The transcript of one session. */
export class Transcript {
  private readonly byId = new Map<string, TranscriptTurn>();
  private readonly chunks = new Map<string, Chunks>();

  /** Turns in order. */
  get turns(): TranscriptTurn[] {
    return [...this.byId.values()].sort((a, b) => a.seq - b.seq);
  }

  /** Forgets everything (after a `reset`, before reloading the turns). */
  clear(): void {
    this.byId.clear();
    this.chunks.clear();
  }

  /** Adds a turn read over REST (`GET .../turns`). */
  load(turn: components["schemas"]["TurnView"]): void {
    this.byId.set(turn.turn_id, {
      turnId: turn.turn_id,
      seq: turn.seq,
      author: turn.author_user_id,
      input: turn.input,
      status: turn.status,
      reply: turn.output ?? "",
      attempt: 0,
      ...(turn.error ? { error: turn.error } : {}),
    });
  }

  /** Applies a durable event. Returns whether it concerned a turn. */
  event(event: SessionEvent): boolean {
    const d = event.data;
    const id = typeof d["turn_id"] === "string" ? d["turn_id"] : undefined;
    if (id !== undefined && event.type === "media.skipped") {
      const turn = this.byId.get(id);
      if (turn === undefined) return false;
      turn.mediaNote = String(d["message"] ?? "Images are off for this reply.");
      return true;
    }
    if (id === undefined || !event.type.startsWith("turn.")) return false;
    if (event.type === "turn.queued") {
      this.byId.set(id, {
        turnId: id,
        seq: Number(d["seq"]),
        author: String(d["author_user_id"] ?? ""),
        input: String(d["input"] ?? ""),
        status: "queued",
        reply: "",
        attempt: 0,
      });
      return true;
    }
    const turn = this.byId.get(id);
    if (turn === undefined) return false;
    switch (event.type) {
      case "turn.started": {
        const attempt = Number(d["attempt"] ?? turn.attempt + 1);
        turn.status = "running";
        delete turn.error;
        if (attempt !== turn.attempt) {
          turn.attempt = attempt;
          turn.reply = "";
          const held = this.chunks.get(id);
          if (held && held.attempt !== attempt) this.chunks.delete(id);
          else if (held) turn.reply = held.parts.join("");
        }
        return true;
      }
      case "turn.completed":
        turn.status = "completed";
        turn.reply = String(d["output"] ?? "");
        if (d["state_change"] && typeof d["state_change"] === "object") {
          turn.stateChange = d["state_change"] as JsonObject;
        }
        this.chunks.delete(id);
        return true;
      case "turn.failed":
        turn.status = "failed";
        turn.error = String(d["error"] ?? "");
        this.chunks.delete(id);
        return true;
      case "turn.retrying":
        turn.status = "retrying";
        turn.error = String(d["error"] ?? "");
        turn.reply = "";
        this.chunks.delete(id);
        return true;
      case "turn.requeued":
        turn.status = "queued";
        turn.reply = "";
        this.chunks.delete(id);
        return true;
      default:
        return false;
    }
  }

  /** Applies a chunk of a reply being written. Returns whether it was used. */
  delta(delta: TurnDelta): boolean {
    const turn = this.byId.get(delta.turn_id);
    if (turn === undefined || turn.status === "completed" || turn.status === "failed") {
      return false;
    }
    if (delta.attempt < turn.attempt) return false;
    // A late chunk of the attempt that just failed.
    if (turn.status === "retrying" && delta.attempt <= turn.attempt) return false;
    let held = this.chunks.get(delta.turn_id);
    if (held === undefined || held.attempt !== delta.attempt) {
      // A newer attempt: drop what was shown of the earlier one.
      held = { attempt: delta.attempt, parts: [] };
      this.chunks.set(delta.turn_id, held);
    }
    held.parts[delta.index] = delta.text;
    if (delta.attempt > turn.attempt) {
      turn.attempt = delta.attempt;
      turn.status = "running";
    }
    // Only the prefix without holes is shown.
    let text = "";
    for (let i = 0; i < held.parts.length; i++) {
      const part = held.parts[i];
      if (part === undefined) break;
      text += part;
    }
    turn.reply = text;
    return true;
  }
}
