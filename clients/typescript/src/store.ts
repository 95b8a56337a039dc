/**
 * The game-state store (seed 003). Everyone holds the state and its
 * version. A `state.updated` event whose version is the current one plus
 * one is applied; an older or equal one is ignored; anything else (an
 * event was missed) makes the store refetch the whole state. A game master
 * changes the state through {@link GameStateStore.update}: one update at a
 * time over the socket, the next queued behind it, applied locally only
 * once the server confirms it; on `VERSION_CONFLICT` the store refetches
 * and the caller's promise is rejected with a {@link VersionConflict}.
 */

import type { Reply, SessionEvent, StateUpdated } from "./events.js";
import { applyAll, type Json, type JsonObject, type StateOperation } from "./ops.js";
import { Disconnected } from "./socket.js";

/** The state as `GET .../state` or `state.get` gives it. */
export interface StateSnapshot {
  state: JsonObject;
  version: number;
}

/** Something the store sends requests with: a {@link SessionSocket}. */
export interface Requester {
  request(type: string, body?: Record<string, Json>): Promise<Reply>;
}

/** The state moved on before an update got there. */
export class VersionConflict extends Error {
  readonly currentVersion: number | undefined;
  constructor(message: string, currentVersion?: number) {
    super(message);
    this.name = "VersionConflict";
    this.currentVersion = currentVersion;
  }
}

/** The server refused an update for another reason (its code). */
export class UpdateRefused extends Error {
  readonly code: string;
  readonly operation: number | undefined;
  constructor(code: string, message: string, operation?: number) {
    super(message);
    this.name = "UpdateRefused";
    this.code = code;
    this.operation = operation;
  }
}

export interface GameStateStoreOptions {
  /** Reads the whole state (REST or `state.get`). */
  fetch: () => Promise<StateSnapshot>;
  /** Where game masters' updates go. */
  requester: Requester;
  /** Called with each new state. */
  onChange?: (snapshot: StateSnapshot) => void;
  /** A fresh client id per update (default: `crypto.randomUUID`). */
  newId?: () => string;
  /** How long to wait before resending after a disconnect (ms, default 500). */
  resendDelayMs?: number;
  /** How long an update may wait for a connection before its promise
   * rejects with `Disconnected` (ms, default 30,000); the updates queued
   * behind it are tried next. */
  giveUpAfterMs?: number;
}

interface Queued {
  id: string;
  operations: StateOperation[];
  resolve: (version: number) => void;
  reject: (error: Error) => void;
}

/** A snapshot from the state view that `GET .../state` and `state.get`
 * answer (`{version, state}`, the document holding the server's
 * `stateVersion` and `lastUpdated`, which are not the store's to apply to). */
export function snapshotOf(view: { readonly [key: string]: unknown }): StateSnapshot {
  const document = view["state"];
  const state: JsonObject = {};
  if (typeof document === "object" && document !== null && !Array.isArray(document)) {
    for (const [key, value] of Object.entries(document as JsonObject)) {
      if (key !== "stateVersion" && key !== "lastUpdated") state[key] = value;
    }
  }
  return { state, version: Number(view["version"] ?? 0) };
}

export class GameStateStore {
  private snapshot: StateSnapshot | undefined;
  private refetching: Promise<void> | undefined;
  private readonly queue: Queued[] = [];
  private sending = false;

  constructor(private readonly options: GameStateStoreOptions) {}

  /** The state now (undefined before the first load). */
  get current(): StateSnapshot | undefined {
    return this.snapshot;
  }

  /** Loads the state; call once, and again after a `reset`. */
  load(): Promise<void> {
    if (this.refetching === undefined) {
      this.refetching = this.options
        .fetch()
        .then((snapshot) => {
          // A refetch never goes back in time.
          if (this.snapshot === undefined || snapshot.version >= this.snapshot.version) {
            this.set(snapshot);
          }
        })
        .finally(() => {
          this.refetching = undefined;
        });
    }
    return this.refetching;
  }

  /** Feeds a durable event; only `state.updated` matters here. */
  event(event: SessionEvent): void {
    if (event.type !== "state.updated") return;
    const data = event.data as unknown as StateUpdated;
    this.updated(data.version, data.operations);
  }

  private updated(version: number, operations: StateOperation[]): void {
    const now = this.snapshot;
    if (now === undefined) {
      void this.load();
      return;
    }
    if (version <= now.version) return;
    if (version !== now.version + 1) {
      void this.load();
      return;
    }
    try {
      this.set({ state: applyAll(now.state, operations), version });
    } catch {
      // The server applied it; if we cannot, our copy is wrong.
      void this.load();
    }
  }

  /** Asks for `operations` as one update (game masters). Resolves with the
   * new version once the server confirmed it and it is applied here. */
  update(operations: StateOperation[]): Promise<number> {
    const newId = this.options.newId ?? (() => globalThis.crypto.randomUUID());
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ id: newId(), operations, resolve, reject });
      void this.pump();
    });
  }

  /** Updates waiting behind the one being sent. */
  get queued(): number {
    return this.queue.length;
  }

  private async pump(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      while (this.queue.length > 0) {
        const next = this.queue[0]!;
        await this.send(next);
        this.queue.shift();
      }
    } finally {
      this.sending = false;
    }
  }

  private async send(item: Queued): Promise<void> {
    const deadline = Date.now() + (this.options.giveUpAfterMs ?? 30_000);
    for (;;) {
      if (this.snapshot === undefined) await this.load();
      const base = this.snapshot!;
      let reply: Reply;
      try {
        reply = await this.options.requester.request("state.update", {
          id: item.id,
          version: base.version,
          operations: item.operations as unknown as Json,
        });
      } catch (err) {
        if (err instanceof Disconnected) {
          if (Date.now() >= deadline) {
            // It may have been applied before the socket went: a later
            // `state.updated` says so, and the store follows it.
            item.reject(err);
            return;
          }
          // Resent with the same id: the server answers a repeat as the
          // first time, so it never applies twice.
          await new Promise((r) => setTimeout(r, this.options.resendDelayMs ?? 500));
          continue;
        }
        item.reject(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      if (reply.ok) {
        const version = Number(reply["new_version"]);
        // The event may have come first; otherwise apply what was confirmed.
        if (this.snapshot !== undefined && this.snapshot.version === version - 1) {
          this.updated(version, item.operations);
        } else if (this.snapshot === undefined || this.snapshot.version < version) {
          await this.load();
        }
        item.resolve(version);
        return;
      }
      const error = reply.error ?? { code: "unknown", message: "refused" };
      if (error.code === "VERSION_CONFLICT") {
        await this.load();
        item.reject(new VersionConflict(error.message, error.current_version));
        return;
      }
      item.reject(new UpdateRefused(error.code, error.message, error.operation));
      return;
    }
  }

  private set(snapshot: StateSnapshot): void {
    this.snapshot = snapshot;
    this.options.onChange?.(snapshot);
  }
}
