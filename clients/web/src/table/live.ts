/**
 * One open session as the table shows it: the socket (resume, backoff),
 * the transcript, the game-state store, the session's media, members and
 * pending proposals, kept up to date from the session's events. No
 * rendering here: the view subscribes and reads.
 *
 * Everything is per session: switching sessions closes this one and opens
 * another, so no message, state or image of one session can show in
 * another.
 */

import {
  GameStateStore,
  SessionSocket,
  Transcript,
  snapshotOf,
  type CloseReason,
  type SessionEvent,
  type StateOperation,
  type StateSnapshot,
  type components,
} from "@questboard/client";
import { must, type Api } from "../shared/api.js";

export type SessionDetail = components["schemas"]["SessionDetail"];
export type Proposal = components["schemas"]["ProposalView"];
export type MediaView = components["schemas"]["MediaView"];

/** One media item as the page shows it. */
export interface MediaItem {
  mediaId: string;
  kind: string;
  status: "pending" | "ready" | "failed";
  turnId?: string;
  name?: string;
  prompt?: string;
  /** A signed link, once ready. */
  url?: string;
  failure?: string;
}

export class LiveSession {
  readonly transcript = new Transcript();
  readonly media = new Map<string, MediaItem>();
  readonly store: GameStateStore;
  detail: SessionDetail | undefined;
  proposals: Proposal[] = [];
  connected = false;
  /** Set when the session is gone for this user (removed, left, archived away). */
  ended: CloseReason | undefined;
  /** The last problem worth telling the user about. */
  notice: string | undefined;
  private readonly socket: SessionSocket;
  private readonly listeners = new Set<() => void>();
  /** Reloads asked for while one runs: one more after it, not one each. */
  private readonly reloads = new Map<string, { running: Promise<void>; again: boolean }>();
  private scheduled = false;
  private closed = false;

  constructor(
    readonly sessionId: string,
    readonly user: string,
    private readonly api: Api,
    readonly token: () => string,
  ) {
    this.store = new GameStateStore({
      fetch: async () =>
        snapshotOf(
          must(await api.GET("/api/sessions/{session_id}/state", { params: { path: { session_id: sessionId } } })) as {
            [key: string]: unknown;
          },
        ),
      requester: { request: (type, body) => this.socket.request(type, body) },
      onChange: () => this.changed(),
    });
    this.socket = new SessionSocket({
      baseUrl: location.origin,
      sessionId,
      token,
      onEvent: (event) => this.event(event),
      onDelta: (delta) => {
        if (this.transcript.delta(delta)) this.changed();
      },
      onReset: () => this.reload("turns", () => this.reloadTurns()),
      onConnection: (open) => {
        this.connected = open;
        this.changed();
      },
      onClose: (reason) => {
        if (!reason.reconnecting) {
          this.ended = reason;
          this.changed();
        }
      },
    });
    void this.loadDetail();
    void this.store.load().catch(() => undefined);
    void this.loadMedia();
  }

  /** The caller's role, once known. */
  get role(): string | undefined {
    return this.detail?.role;
  }

  /** Owners and `gm`s change the state and decide proposals. */
  get isGameMaster(): boolean {
    return this.role === "owner" || this.role === "gm";
  }

  get state(): StateSnapshot | undefined {
    return this.store.current;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
    this.socket.close();
    this.listeners.clear();
  }

  /** Asks the store for one update (game masters). */
  update(operations: StateOperation[]): Promise<number> {
    return this.store.update(operations);
  }

  /** Notifies the view once per frame however many events came. */
  private changed(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      for (const listener of this.listeners) listener();
    });
  }

  private event(event: SessionEvent): void {
    this.transcript.event(event);
    this.store.event(event);
    const d = event.data as Record<string, unknown>;
    switch (event.type) {
      case "media.requested":
      case "media.ready":
      case "media.failed": {
        const id = String(d["media_id"] ?? "");
        if (!id) break;
        const item: MediaItem = this.media.get(id) ?? { mediaId: id, kind: String(d["kind"] ?? "image"), status: "pending" };
        if (typeof d["turn_id"] === "string") item.turnId = d["turn_id"];
        if (typeof d["prompt"] === "string") item.prompt = d["prompt"];
        if (event.type === "media.ready") {
          item.status = "ready";
          delete item.url;
          void this.link(item);
        } else if (event.type === "media.failed") {
          item.status = "failed";
          item.failure = String(d["reason"] ?? "");
        }
        this.media.set(id, item);
        if (event.type === "media.ready" && (item.kind === "map" || item.kind === "note")) this.reload("media", () => this.loadMedia());
        break;
      }
      case "media.deleted":
        this.media.delete(String(d["media_id"] ?? ""));
        break;
      case "member.joined":
      case "member.left":
      case "member.removed":
      case "member.role_changed":
      case "session.updated":
      case "session.archived":
        this.reload("detail", () => this.loadDetail());
        break;
      case "state.proposed":
      case "state.proposal.approved":
      case "state.proposal.rejected":
        this.reload("proposals", () => this.loadProposals());
        break;
      default:
        break;
    }
    this.changed();
  }

  /** Runs `load` now, or once more after the run in progress (a replay of
   * many events asks for the same reload many times). */
  private reload(what: string, load: () => Promise<void>): void {
    const now = this.reloads.get(what);
    if (now) {
      now.again = true;
      return;
    }
    const entry = { running: Promise.resolve(), again: false };
    entry.running = (async () => {
      do {
        entry.again = false;
        try {
          await load();
        } catch (err) {
          this.notice = err instanceof Error ? err.message : String(err);
        }
      } while (entry.again && !this.closed);
      this.reloads.delete(what);
      this.changed();
    })();
    this.reloads.set(what, entry);
  }

  private async loadDetail(): Promise<void> {
    try {
      this.detail = must(
        await this.api.GET("/api/sessions/{session_id}", { params: { path: { session_id: this.sessionId } } }),
      );
      if (this.isGameMaster) await this.loadProposals();
    } catch (err) {
      this.notice = err instanceof Error ? err.message : String(err);
    }
    this.changed();
  }

  private async loadProposals(): Promise<void> {
    if (!this.isGameMaster) return;
    const page = must(
      await this.api.GET("/api/sessions/{session_id}/state/proposals", {
        params: { path: { session_id: this.sessionId }, query: { status: "pending" } },
      }),
    );
    this.proposals = page.proposals;
    this.changed();
  }

  /** Reads every media item (all kinds) and links the ready ones. */
  private async loadMedia(): Promise<void> {
    let cursor: string | undefined;
    try {
      do {
        const page = must(
          await this.api.GET("/api/sessions/{session_id}/media", {
            params: { path: { session_id: this.sessionId }, query: { limit: 100, ...(cursor ? { cursor } : {}) } },
          }),
        );
        for (const m of page.media) {
          const known = this.media.get(m.media_id);
          const item: MediaItem = {
            ...known,
            mediaId: m.media_id,
            kind: m.kind,
            status: m.status === "ready" ? "ready" : m.status === "failed" ? "failed" : "pending",
            ...(m.original_name ? { name: m.original_name } : {}),
            ...(m.failure ? { failure: m.failure } : {}),
          };
          const turnId = (m as { turn_id?: string | null }).turn_id;
          if (turnId) item.turnId = turnId;
          this.media.set(m.media_id, item);
          if (item.status === "ready" && item.url === undefined && (item.kind === "image" || item.kind === "audio")) {
            void this.link(item);
          }
        }
        cursor = page.next_cursor ?? undefined;
      } while (cursor);
    } catch (err) {
      this.notice = err instanceof Error ? err.message : String(err);
    }
    this.changed();
  }

  /** A signed link for a ready item (to show it or open it). */
  async link(item: MediaItem): Promise<string | undefined> {
    try {
      const link = must(
        await this.api.GET("/api/sessions/{session_id}/media/{media_id}/url", {
          params: { path: { session_id: this.sessionId, media_id: item.mediaId } },
        }),
      );
      item.url = link.url;
      this.changed();
      return link.url;
    } catch {
      return undefined;
    }
  }

  /** After a `reset` (events before it were pruned): the turns over REST. */
  private async reloadTurns(): Promise<void> {
    this.transcript.clear();
    let after = 0;
    for (;;) {
      const page = must(
        await this.api.GET("/api/sessions/{session_id}/turns", {
          params: { path: { session_id: this.sessionId }, query: { after_seq: after, limit: 100 } },
        }),
      );
      for (const turn of page.turns) this.transcript.load(turn);
      const last = page.turns.at(-1);
      if (!last || page.turns.length < 100) break;
      after = last.seq;
    }
    await this.store.load();
    this.changed();
  }
}
