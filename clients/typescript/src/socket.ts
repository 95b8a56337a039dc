/**
 * The session socket: `GET /ws/sessions/{id}?after_seq=N`, kept open.
 * It reconnects after any disconnect (backoff with jitter; at once when the
 * browser comes back online) and resumes after the last `seq` it delivered,
 * so its consumer sees every durable event once and in order. Close codes
 * become typed reasons; the ones that mean "do not come back" (removed,
 * archived) end it. Requests (`state.get`, `state.update`, ...) are sent
 * with a `request_id` and answered by a promise.
 */

import { Backoff, type BackoffOptions } from "./backoff.js";
import type { Incoming, Reply, ResetNotice, ResyncNotice, SessionEvent, TurnDelta } from "./events.js";
import type { Json } from "./ops.js";

/** Why a socket closed, from its close code. */
export type CloseKind =
  /** 4003: the user is no longer a member, or the session is archived. Final. */
  | "access_ended"
  /** 4001: the token expired; reconnects with a fresh one. */
  | "token_expired"
  /** 4008: this client could not keep up; reconnects. */
  | "fell_behind"
  /** 4000: no pong in time; reconnects. */
  | "no_pong"
  /** 1011: the server could not read the session; reconnects later. */
  | "server_error"
  /** 1002, 1003, 1007, 1009: the client sent something the protocol forbids. */
  | "protocol_error"
  /** 1000: this client closed it. Final. */
  | "closed"
  /** The browser said the network is gone: closed here at once, and
   * connected again as soon as it says the network is back. */
  | "offline"
  /** Anything else (a network drop, a refused upgrade): reconnects. */
  | "connection_lost";

export interface CloseReason {
  kind: CloseKind;
  code: number;
  reason: string;
  /** Whether the socket will connect again. */
  reconnecting: boolean;
}

/** Classifies a close code. */
export function closeKind(code: number): CloseKind {
  switch (code) {
    case 4003:
      return "access_ended";
    case 4001:
      return "token_expired";
    case 4008:
      return "fell_behind";
    case 4000:
      return "no_pong";
    case 1011:
      return "server_error";
    case 1002:
    case 1003:
    case 1007:
    case 1009:
      return "protocol_error";
    case 1000:
      return "closed";
    default:
      return "connection_lost";
  }
}

/** Where the browser says it is; `navigator`/`window` by default. */
export interface Connectivity {
  isOnline(): boolean;
  /** Calls `back` when the network returns; returns an unsubscribe. */
  onOnline(back: () => void): () => void;
  /** Calls `gone` when the network goes away; returns an unsubscribe. */
  onOffline?(gone: () => void): () => void;
}

function browserConnectivity(): Connectivity {
  const g = globalThis as unknown as {
    navigator?: { onLine?: boolean };
    addEventListener?: (type: string, f: () => void) => void;
    removeEventListener?: (type: string, f: () => void) => void;
  };
  return {
    isOnline: () => g.navigator?.onLine !== false,
    onOnline: (back) => {
      g.addEventListener?.("online", back);
      return () => g.removeEventListener?.("online", back);
    },
    onOffline: (gone) => {
      g.addEventListener?.("offline", gone);
      return () => g.removeEventListener?.("offline", gone);
    },
  };
}

/** The WebSocket constructor used (the global one by default). */
export type WebSocketLike = new (url: string, protocols?: string | string[]) => WebSocket;

/** The subprotocol that carries the token (browsers cannot set headers on
 * a WebSocket; a protocol header, unlike the URL, is not in access logs). */
export const BEARER_PROTOCOL = "questboard.bearer";

export interface SessionSocketOptions {
  /** The questboard origin, e.g. `https://play.example.com`. */
  baseUrl: string;
  sessionId: string;
  /** A current token for each connection (called again after 4001). */
  token: () => string | Promise<string>;
  /** Resume after this seq (default 0: the whole log). */
  afterSeq?: number;
  backoff?: BackoffOptions;
  connectivity?: Connectivity;
  WebSocket?: WebSocketLike;
  /** A durable event, each once, in seq order. */
  onEvent?: (event: SessionEvent) => void;
  /** A chunk of a reply being written. */
  onDelta?: (delta: TurnDelta) => void;
  /** Events before `notice.seq` were pruned: refetch what you show. */
  onReset?: (notice: ResetNotice) => void;
  /** The live feed had a gap; the missed events follow by themselves. */
  onResync?: (notice: ResyncNotice) => void;
  /** Connected (`true`) or not. */
  onConnection?: (open: boolean) => void;
  /** Every close, with whether it reconnects. */
  onClose?: (reason: CloseReason) => void;
}

/** A request the server did not answer because the socket went away. */
export class Disconnected extends Error {
  constructor() {
    super("the socket closed before the reply came");
    this.name = "Disconnected";
  }
}

interface Pending {
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
}

export class SessionSocket {
  private ws: WebSocket | undefined;
  private lastSeq: number;
  private stopped = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private nextRequest = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly backoff: Backoff;
  private readonly connectivity: Connectivity;
  private readonly unsubscribe: () => void;
  private readonly WS: WebSocketLike;

  constructor(private readonly options: SessionSocketOptions) {
    this.lastSeq = options.afterSeq ?? 0;
    this.backoff = new Backoff(options.backoff);
    this.connectivity = options.connectivity ?? browserConnectivity();
    this.WS = options.WebSocket ?? (globalThis.WebSocket as WebSocketLike);
    const offOnline = this.connectivity.onOnline(() => {
      if (!this.stopped && this.ws === undefined) {
        clearTimeout(this.timer);
        void this.connect();
      }
    });
    // A socket the browser knows is cut can still look open for a long
    // time (until pings fail): close it now, and say so.
    const offOffline = this.connectivity.onOffline?.(() => this.offline());
    this.unsubscribe = () => {
      offOnline();
      offOffline?.();
    };
    void this.connect();
  }

  /** The seq of the last durable event delivered. */
  get seq(): number {
    return this.lastSeq;
  }

  /** Whether the socket is open now. */
  get open(): boolean {
    return this.ws?.readyState === 1;
  }

  /** Closes for good. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.unsubscribe();
    this.ws?.close(1000);
    this.failPending();
  }

  /** Sends `{type, request_id, ...body}` and resolves with the reply
   * (`ok` true or false); rejects with {@link Disconnected} if the socket
   * closes first. */
  request(type: string, body: Record<string, Json> = {}): Promise<Reply> {
    const ws = this.ws;
    if (ws === undefined || ws.readyState !== 1) return Promise.reject(new Disconnected());
    const requestId = `r${this.nextRequest++}`;
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(requestId, { resolve, reject });
      ws.send(JSON.stringify({ ...body, type, request_id: requestId }));
    });
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    if (!this.connectivity.isOnline()) return; // onOnline brings us back
    let token: string;
    try {
      token = await this.options.token();
    } catch {
      this.retry();
      return;
    }
    if (this.stopped) return;
    const base = this.options.baseUrl.replace(/^http/, "ws").replace(/\/$/, "");
    const url =
      `${base}/ws/sessions/${encodeURIComponent(this.options.sessionId)}` + `?after_seq=${this.lastSeq}`;
    const ws = new this.WS(url, [BEARER_PROTOCOL, token]);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.options.onConnection?.(true);
    };
    ws.onmessage = (message: MessageEvent) => {
      if (typeof message.data !== "string") return;
      let parsed: Incoming;
      try {
        parsed = JSON.parse(message.data) as Incoming;
      } catch {
        return;
      }
      this.backoff.reset();
      this.deliver(parsed);
    };
    ws.onclose = (event: CloseEvent) => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.failPending();
      if (opened) this.options.onConnection?.(false);
      const kind = closeKind(event.code);
      const final = this.stopped || kind === "access_ended" || kind === "closed";
      this.options.onClose?.({
        kind,
        code: event.code,
        reason: event.reason,
        reconnecting: !final,
      });
      if (final) {
        this.stopped = true;
        this.unsubscribe();
        return;
      }
      if (kind === "token_expired") {
        // A fresh token is all it needs.
        void this.connect();
      } else {
        this.retry();
      }
    };
  }

  private offline(): void {
    const ws = this.ws;
    if (this.stopped || ws === undefined) return;
    this.ws = undefined; // its own close event is ignored
    clearTimeout(this.timer);
    const wasOpen = ws.readyState === 1;
    ws.close(1000);
    this.failPending();
    if (wasOpen) this.options.onConnection?.(false);
    this.options.onClose?.({ kind: "offline", code: 0, reason: "the browser went offline", reconnecting: true });
  }

  private retry(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), this.backoff.next());
  }

  private failPending(): void {
    for (const { reject } of this.pending.values()) reject(new Disconnected());
    this.pending.clear();
  }

  private deliver(message: Incoming): void {
    switch (message.type) {
      case "turn.delta":
        this.options.onDelta?.(message as TurnDelta);
        return;
      case "reply": {
        const reply = message as Reply;
        const key = String(reply.request_id);
        const pending = this.pending.get(key);
        if (pending) {
          this.pending.delete(key);
          pending.resolve(reply);
        }
        return;
      }
      case "reset": {
        const notice = message as ResetNotice;
        this.lastSeq = Math.max(this.lastSeq, notice.seq);
        this.options.onReset?.(notice);
        return;
      }
      case "resync":
        this.options.onResync?.(message as ResyncNotice);
        return;
      default: {
        const event = message as SessionEvent;
        if (typeof event.seq !== "number") return;
        if (event.seq <= this.lastSeq) return; // already delivered
        this.lastSeq = event.seq;
        this.options.onEvent?.(event);
      }
    }
  }
}
