//! `GET /ws/sessions/{id}?after_seq=N`: a member's live view of a session.
//!
//! The upgrade happens only after authentication (`Authorization: Bearer`
//! header; for browsers, which cannot set headers on a WebSocket, the
//! subprotocols `questboard.bearer, <token>` ([`BEARER_PROTOCOL`]: a header,
//! so the token stays out of URLs that proxies log), or else the
//! `access_token` query parameter) and a membership check: a bad token gets 401 and
//! a non-member 404, never a 101. An `Origin` outside
//! `QB_WS_ALLOWED_ORIGINS` (when set) gets 403.
//!
//! On connect the socket first subscribes to the session's channel, then
//! sends every stored event with `seq > after_seq` in order, then live
//! events, with no gap and no duplicate: a live event whose seq is not the
//! next one waits up to [`REORDER_WINDOW`] for the ones before it (events
//! are published by whichever task committed them, so they arrive a little
//! out of order), and what has not come by then is read from Postgres;
//! seqs already sent are skipped. An `after_seq` past the session's newest event is read
//! as the newest: a client cannot skip events it has not seen.
//!
//! `turn.delta` chunks carry their attempt and the seq of that attempt's
//! `turn.started` (`started_seq`); a chunk is sent only after every event up
//! to `started_seq` (held with them, in arrival order), so a chunk never
//! overtakes the events before it.
//!
//! **Access ends with membership.** A socket closes with 4003 once it has
//! sent the event that ends its user's access: `member.removed` or
//! `member.left` naming them, or `session.archived` (a socket opened on an
//! archived session replays what its client missed, then closes the same
//! way). Since chunks wait for the events before them and `after_seq`
//! cannot skip ahead, a removed member receives nothing of a turn
//! submitted after the removal, whichever API process made it.
//!
//! **Tokens expire on open sockets too.** The socket closes with 4001 when
//! its token expires (plus the verifier's leeway), unless the client sent
//! a fresh token for the same user before then: `{"type": "auth",
//! "request_id", "token"}`, answered with `{"type": "reply", "ok": true,
//! "expires_at"}` (the new expiry, seconds since the epoch), or an error
//! reply (`unauthorized`, or `forbidden` for another user's token) that
//! leaves the old expiry in force.
//!
//! **Openings are admitted a few at a time.** Opening a socket reads
//! Postgres three times (membership, the user's socket count, the first
//! replay page); at most as many openings as the pool has connections
//! (`QB_DB_MAX_CONNECTIONS`) run at once, from the membership check until
//! the first catch-up is sent. One that waits [`OPENING_WAIT`] for its
//! turn gets 503 `unavailable` with `Retry-After`, before any database
//! work. Without it, 10,000 clients reconnecting to a restarted process
//! each took a connection for the first check and queued for the next
//! behind all the others: nearly every opening timed out on the pool
//! half done, and they did not converge (BENCHMARKS.md, "Scale").
//!
//! Events older than the retention period are pruned: a client resuming
//! from a seq that was pruned first gets `{"type": "reset", "session_id",
//! "seq", "reason": "events_pruned", "pruned_through"}`, never a silent
//! gap; it refetches the state it shows, and the socket goes on with the
//! events after `seq`.
//!
//! The client may ask for the game state and change it on the same socket
//! (see [`super::state`] for the rules, the same as over REST):
//! `{"type": "state.get", "request_id"}`, `{"type": "state.update",
//! "request_id", "id"?, "version", "operations"}`, and decide on proposals
//! held for review (see [`super::proposals`]): `{"type":
//! "state.proposal.approve", "request_id", "proposal_id", "version"?}` and
//! `{"type": "state.proposal.reject", "request_id", "proposal_id",
//! "reason"?}`, each answered with
//! `{"type": "reply", "request_id", "ok": true, ...}` (the state view, or
//! `new_version` and `update_id`) or `{"type": "reply", "request_id", "ok":
//! false, "error": {"code", "message", ...}}` with the codes of REST. A
//! message that is not JSON, has a key twice in one object (as REST
//! refuses), has no `request_id` that is a string of at most 128
//! characters or an integer of magnitude at most 2^53 - 1 (echoed exactly
//! as sent), or has an unknown `type` gets an error reply with code
//! `bad_message` (and `request_id` null when it had none). Messages are
//! limited to [`MAX_CLIENT_MESSAGE`] bytes. The update's `state.updated`
//! event reaches this socket like every other member's, before or after
//! the reply.
//!
//! Close codes: the standard ones where they apply: 1000 echoed to a
//! client that closes; 1009 a message over [`MAX_CLIENT_MESSAGE`]; 1003 a
//! binary message (the protocol is JSON text); 1007 a text message that is
//! not UTF-8; 1002 a protocol error (reserved bits, a bad opcode, a broken
//! fragment sequence); 1011 events could not be read. Ours: 4001 the token
//! expired (reconnect with a fresh one); 4003 the user is no longer a
//! member, or the session is archived (do not reconnect; the reason says
//! which); 4008 the client fell behind (reconnect with `after_seq`); 4000
//! no pong within [`PONG_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::get;
use chrono::Utc;
use questboard_core::events::{self, Event, Message};
use questboard_core::identity::UserId;
use questboard_core::metrics as m;
use questboard_core::sessions;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AppState;
use super::error::{Error, Result};
use super::extract::{Path, Query, bearer_token};
use crate::auth::AuthError;
use crate::bridge::Live;

/// How often the server pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long a client may take to answer a ping.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(45);
/// How long one send may take before the client counts as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a client may send (a `state.update` of at most this
/// size; larger updates go through REST, up to `QB_MAX_BODY_BYTES`). A
/// larger message ends the connection.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Read and write buffer of a socket.
pub const SOCKET_BUFFER: usize = 4096;
/// Events read from Postgres per page when replaying.
const REPLAY_PAGE: i64 = 500;
/// Longest an opening waits for its turn (see the module docs).
pub const OPENING_WAIT: Duration = Duration::from_secs(1);

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ws/sessions/{session_id}", get(ws_session))
}

/// The subprotocol a browser offers first, followed by its token as a
/// second "protocol": `new WebSocket(url, ["questboard.bearer", token])`.
/// The server answers with this one, as the protocol requires.
pub const BEARER_PROTOCOL: &str = "questboard.bearer";

/// The token offered after [`BEARER_PROTOCOL`] in `Sec-WebSocket-Protocol`.
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let at = offered.iter().position(|p| *p == BEARER_PROTOCOL)?;
    offered.get(at + 1).map(|token| (*token).to_owned())
}

/// Query of the WebSocket route.
#[derive(Debug, Deserialize)]
pub struct WsParams {
    /// Resume after this event (default 0: everything).
    pub after_seq: Option<i64>,
    /// The bearer token, for browsers.
    pub access_token: Option<String>,
}

async fn ws_session(
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    upgrade: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let token = match bearer_token(&headers) {
        Ok(token) => token.to_owned(),
        Err(AuthError::Missing) => protocol_token(&headers)
            .or_else(|| params.access_token.clone())
            .ok_or(AuthError::Missing)?,
        Err(err) => return Err(err.into()),
    };
    let caller = state.auth.verify_caller(&token).await?;
    let user = caller.user;
    if let (Some(allowed), Some(origin)) = (&state.ws_allowed_origins, headers.get(header::ORIGIN))
    {
        let origin = origin.to_str().unwrap_or_default();
        if !allowed.iter().any(|a| a == origin) {
            return Err(Error::Forbidden(
                "this Origin may not open session sockets".into(),
            ));
        }
    }
    let opening = tokio::time::timeout(OPENING_WAIT, state.ws_openings.clone().acquire_owned())
        .await
        .ok()
        .and_then(std::result::Result::ok)
        .ok_or_else(|| {
            Error::Unavailable("too many sockets are opening right now; retry shortly".into())
        })?;
    let (membership, last_seq) =
        sessions::require_member_at_seq(&state.pool, session_id, &user).await?;
    let after = params.after_seq.unwrap_or(0);
    if after < 0 {
        return Err(Error::bad_request(
            "invalid_query",
            "after_seq must be >= 0",
        ));
    }
    let upgrade = upgrade.map_err(|rejection| {
        Error::bad_request(
            "websocket_required",
            format!("expected a WebSocket upgrade: {rejection}"),
        )
    })?;
    // The user's sockets across API processes (`user_max_sockets`),
    // refused before the upgrade: a plain 429 with Retry-After.
    let slot = state
        .sockets
        .open(
            user.as_str(),
            state
                .quotas
                .limit(questboard_core::quotas::Quota::UserMaxSockets),
        )
        .await??;
    Ok(upgrade
        .protocols([BEARER_PROTOCOL])
        // tungstenite's defaults (128 KiB read buffer, 128 KiB write
        // buffer) would cost every socket ~140 KiB of resident memory;
        // client messages are small (at most MAX_CLIENT_MESSAGE) and so are ours.
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            metrics::gauge!(m::WS_CONNECTIONS).increment(1.0);
            Socket {
                state,
                socket,
                session_id,
                user,
                // A client may not resume past the log's end as the
                // membership check saw it: what it asked to skip would
                // include whatever ends its access from now on.
                last: after.min(last_seq),
                archived: membership.session.status == sessions::SessionStatus::Archived,
                expires: expiry(caller.expires_at),
                held: Held::default(),
                opening: Some(opening),
            }
            .run()
            .await;
            metrics::gauge!(m::WS_CONNECTIONS).decrement(1.0);
        }))
}

struct Socket {
    state: AppState,
    socket: WebSocket,
    session_id: Uuid,
    user: UserId,
    /// The last seq sent.
    last: i64,
    /// The session was archived when the socket opened: it replays what
    /// the client missed, then closes (4003).
    archived: bool,
    /// When the token the socket was opened (or last re-authenticated)
    /// with expires, plus the leeway: the socket closes then (4001).
    expires: tokio::time::Instant,
    /// Live messages that came ahead of an event not sent yet.
    held: Held,
    /// This socket's place among the openings, given back once the
    /// first catch-up is sent.
    opening: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How long a live event that skips ahead waits for the ones before it
/// before they are read from Postgres.
pub const REORDER_WINDOW: Duration = Duration::from_millis(250);
/// Most messages held while waiting; past that, Postgres is read at once.
const MAX_HELD: usize = 256;

/// Live messages held back for order (see [`Socket::deliver`]).
#[derive(Default)]
struct Held {
    /// In arrival order.
    queue: std::collections::VecDeque<Arc<Message>>,
    /// When the window ends (None: nothing held).
    until: Option<tokio::time::Instant>,
}

impl Held {
    fn hold(&mut self, message: Arc<Message>) {
        self.until
            .get_or_insert_with(|| tokio::time::Instant::now() + REORDER_WINDOW);
        self.queue.push_back(message);
    }
}

/// When a live message can be sent.
enum Ready {
    Now,
    Later,
    /// Already sent (an event seen before).
    Never,
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a token expiring at `exp` (seconds since the epoch) stops being
/// good for a socket: then plus [`crate::auth::LEEWAY_SECS`].
fn expiry(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // The verifier refuses a token once `now > exp + leeway` in whole
    // seconds: the socket ends at that same second.
    let left =
        Duration::from_secs(exp.saturating_add(crate::auth::LEEWAY_SECS + 1)).saturating_sub(now);
    tokio::time::Instant::now() + left
}

/// Every `reason` label of `questboard_ws_closed_by_server_total`.
pub const CLOSE_REASONS: [&str; 10] = [
    "removed",
    "archived",
    "token_expired",
    "slow_consumer",
    "ping_timeout",
    "message_too_big",
    "unsupported_data",
    "invalid_payload",
    "protocol_error",
    "error",
];

/// The close of a socket whose user lost access to the session.
const REMOVED: End = End::Close(4003, "no longer a member of this session", "removed");
/// The close of a socket on an archived session.
const ARCHIVED: End = End::Close(4003, "the session is archived", "archived");

/// Why a socket loop ended.
enum End {
    /// The client left or the connection broke.
    Gone,
    /// The client sent Close: the answering Close (same code) is queued.
    ClosedByClient,
    /// Close with this code and reason.
    Close(u16, &'static str, &'static str),
}

impl Socket {
    async fn run(mut self) {
        // Subscribe before reading history, so nothing falls in between.
        let mut live = self.state.bridge.subscribe(self.session_id);
        let caught_up = Box::pin(self.catch_up("resume")).await;
        self.opening = None;
        let end = match caught_up {
            Err(end) => end,
            Ok(()) if self.archived => ARCHIVED,
            Ok(()) => self.serve(&mut live).await,
        };
        match end {
            End::Close(code, reason, label) => {
                metrics::counter!(m::WS_CLOSED_TOTAL, "reason" => label).increment(1);
                // Bounded: a client that stopped reading may never take it.
                let close = self.socket.send(WsMessage::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                })));
                let _ = tokio::time::timeout(SEND_TIMEOUT, close).await;
            }
            End::ClosedByClient => {
                // tungstenite queued the echo when it read the Close;
                // reading once more sends it (and then reports the end).
                let _ = tokio::time::timeout(SEND_TIMEOUT, self.socket.recv()).await;
            }
            End::Gone => {}
        }
    }

    async fn serve(&mut self, live: &mut crate::bridge::Subscription) -> End {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let mut last_pong = Instant::now();
        loop {
            tokio::select! {
                received = live.recv() => {
                    let result = match received {
                        Ok(Live::Message(message)) => self.deliver(message).await,
                        Ok(Live::Resync { interrupted: false }) => self.resync().await,
                        Ok(Live::Resync { interrupted: true }) => {
                            // Say so first: the client may show "reconnected";
                            // what it missed follows, in order.
                            let notice = serde_json::json!({
                                "type": "resync",
                                "reason": "live_feed_interrupted",
                                "after_seq": self.last,
                            });
                            match self.send_json(&notice).await {
                                Ok(()) => self.resync().await,
                                Err(end) => Err(end),
                            }
                        }
                        Err(RecvError::Lagged(_)) => Err(End::Close(4008, "slow consumer: reconnect with after_seq", "slow_consumer")),
                        Err(RecvError::Closed) => Err(End::Gone),
                    };
                    if let Err(end) = result {
                        return end;
                    }
                }
                incoming = self.socket.recv() => match incoming {
                    None => return End::Gone,
                    Some(Err(err)) => return read_failed(err),
                    Some(Ok(WsMessage::Close(_))) => return End::ClosedByClient,
                    Some(Ok(WsMessage::Binary(_))) => {
                        return End::Close(1003, "binary messages are not supported: send JSON text", "unsupported_data");
                    }
                    Some(Ok(WsMessage::Pong(_))) => last_pong = Instant::now(),
                    Some(Ok(WsMessage::Text(text))) => {
                        let reply = Box::pin(self.answer(text.as_str())).await;
                        if let Err(end) = self.send_json(&reply).await {
                            return end;
                        }
                    }
                    // Pings are answered by axum.
                    Some(Ok(_)) => {}
                },
                () = sleep_until_some(self.held.until) => {
                    if let Err(end) = self.fill_gap().await {
                        return end;
                    }
                }
                () = tokio::time::sleep_until(self.expires) => {
                    return End::Close(4001, "token expired: reconnect with a fresh token", "token_expired");
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > PONG_TIMEOUT {
                        return End::Close(4000, "ping timeout", "ping_timeout");
                    }
                    if self.socket.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// Tells the client that events after the last one it saw were pruned
    /// (the log is at `horizon`), and goes on from the session's newest event.
    async fn reset(&mut self, horizon: events::Horizon) -> Result<(), End> {
        let reset = super::events::Reset::pruned(horizon);
        self.send_json(&serde_json::json!({
            "type": "reset",
            "session_id": self.session_id,
            "seq": reset.seq,
            "reason": reset.reason,
            "pruned_through": reset.pruned_through,
        }))
        .await?;
        self.last = reset.seq;
        Ok(())
    }

    /// Sends every stored event after the last one sent (after a `reset`
    /// if some of them were pruned). Callers box it: a socket lives long
    /// and catches up rarely, so its replay state is not kept inline in
    /// every socket's future.
    async fn catch_up(&mut self, reason: &'static str) -> Result<(), End> {
        loop {
            let page =
                events::replay_page(&self.state.pool, self.session_id, self.last, REPLAY_PAGE)
                    .await
                    .map_err(|err| {
                        tracing::warn!(error = %err, "reading events for a socket failed");
                        End::Close(1011, "temporarily unable to read events", "error")
                    })?;
            let Some((horizon, page)) = page else {
                return Err(REMOVED);
            };
            if horizon.must_reset(self.last) {
                self.reset(horizon).await?;
                continue;
            }
            if page.first().is_some_and(|e| e.seq > self.last + 1) {
                // The log has no gaps but where retention pruned it, and
                // the horizon read with this page says it did not.
                return Err(End::Close(
                    1011,
                    "the event log changed; reconnect",
                    "error",
                ));
            }
            let count = page.len();
            metrics::counter!(m::EVENTS_REPLAYED_TOTAL, "reason" => reason).increment(count as u64);
            for event in &page {
                self.send_event(event).await?;
            }
            if (count as i64) < REPLAY_PAGE {
                return Ok(());
            }
        }
    }

    /// Delivers a live message in order: an event when it is the next
    /// seq, a chunk once every event up to its attempt's `turn.started`
    /// was sent (so a chunk never overtakes the events before it, such as
    /// this user's removal, which closes the socket instead). What comes
    /// ahead of that is held, in arrival order, for up to
    /// [`REORDER_WINDOW`]: events of one session are committed in seq
    /// order but published by whichever task (or process) committed them,
    /// so the one before is usually a moment behind on the live feed. If
    /// it has not come by then, what is missing is read from Postgres
    /// ([`Socket::fill_gap`]). Seqs already sent are skipped.
    async fn deliver(&mut self, message: Arc<Message>) -> Result<(), End> {
        if self.held.queue.is_empty() {
            match self.readiness(&message) {
                Ready::Now => return self.send_message(&message).await,
                Ready::Never => return Ok(()),
                Ready::Later => {}
            }
        }
        self.held.hold(message);
        if self.held.queue.len() > MAX_HELD {
            return self.fill_gap().await;
        }
        self.pump().await
    }

    /// Whether `message` can be sent now, later, or never (already sent).
    fn readiness(&self, message: &Message) -> Ready {
        match message {
            Message::Event(e) if e.seq <= self.last => Ready::Never,
            Message::Event(e) if e.seq == self.last + 1 => Ready::Now,
            Message::Delta(d) if d.started_seq <= self.last => Ready::Now,
            _ => Ready::Later,
        }
    }

    /// Sends, again and again, the earliest held message that can be sent
    /// now, dropping those already sent; closes the window once nothing
    /// is held.
    async fn pump(&mut self) -> Result<(), End> {
        loop {
            let mut next = None;
            let mut i = 0;
            while i < self.held.queue.len() {
                match self.readiness(&self.held.queue[i]) {
                    Ready::Never => {
                        self.held.queue.remove(i);
                    }
                    Ready::Now => {
                        next = self.held.queue.remove(i);
                        break;
                    }
                    Ready::Later => i += 1,
                }
            }
            let Some(message) = next else { break };
            self.send_message(&message).await?;
        }
        if self.held.queue.is_empty() {
            self.held.until = None;
        }
        Ok(())
    }

    async fn send_message(&mut self, message: &Message) -> Result<(), End> {
        match message {
            Message::Event(event) => {
                let lag = (Utc::now() - event.at).to_std().unwrap_or_default();
                metrics::histogram!(m::EVENT_DELIVERY_LAG_SECONDS).record(lag.as_secs_f64());
                metrics::counter!(m::EVENTS_DELIVERED_TOTAL).increment(1);
                self.send_event(event).await
            }
            Message::Delta(delta) => {
                metrics::counter!(m::DELTAS_DELIVERED_TOTAL).increment(1);
                self.send_json(delta).await
            }
        }
    }

    /// After the channel was (re)subscribed: what may have been missed,
    /// from Postgres, then whatever was held behind it.
    async fn resync(&mut self) -> Result<(), End> {
        Box::pin(self.catch_up("resync")).await?;
        self.pump().await
    }

    /// Reads from Postgres what the live feed did not bring within the
    /// window (lost while Redis was away, or published before this
    /// socket's subscription took effect): every event after the last seq
    /// sent. Seqs are allocated under the session row lock, so every event
    /// before a held one is committed by now and the read includes them;
    /// then the held chunks go out. A chunk still ahead of the log is not
    /// a chunk of this session's turns, and is dropped.
    async fn fill_gap(&mut self) -> Result<(), End> {
        Box::pin(self.catch_up("gap")).await?;
        self.pump().await?;
        self.held.queue.clear();
        self.held.until = None;
        Ok(())
    }

    async fn send_event(&mut self, event: &Event) -> Result<(), End> {
        if event.seq != self.last + 1 {
            return Ok(());
        }
        self.send_json(event).await?;
        self.last = event.seq;
        if event.ends_access_of(self.user.as_str()) {
            return Err(if event.kind == "session.archived" {
                ARCHIVED
            } else {
                REMOVED
            });
        }
        Ok(())
    }

    async fn send_json(&mut self, value: &impl serde::Serialize) -> Result<(), End> {
        let text = serde_json::to_string(value).map_err(|_| End::Gone)?;
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(WsMessage::Text(text.into())))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Close(
                4008,
                "slow consumer: reconnect with after_seq",
                "slow_consumer",
            )),
        }
    }
}

/// A decision on a held proposal, sent on the socket.
#[derive(Debug, Deserialize)]
struct ProposalDecision {
    proposal_id: Uuid,
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    version: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
}

fn decision_shape(err: &serde_json::Error) -> Error {
    Error::Unprocessable(format!(
        "a decision needs `proposal_id` (a UUID), and may have `version` (integer, to approve) or `reason` (string, to reject): {}",
        super::extract::describe(&err.to_string())
    ))
}

/// Largest integer a `request_id` may be: the largest a JavaScript number
/// holds exactly (2^53 - 1), so the id a browser sent is the id it gets back.
pub const MAX_REQUEST_ID: i64 = (1 << 53) - 1;

impl Socket {
    /// The reply to a client's message (see the module docs).
    async fn answer(&mut self, text: &str) -> serde_json::Value {
        use serde_json::{Value, json};
        let bad = |request_id: &Value, message: &str| {
            json!({"type": "reply", "request_id": request_id, "ok": false,
                   "error": {"code": "bad_message", "message": message}})
        };
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return bad(&Value::Null, "messages are JSON objects");
        };
        let request_id = match message.get("request_id") {
            Some(Value::String(s)) if s.chars().count() <= 128 => Value::String(s.clone()),
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n.abs() <= MAX_REQUEST_ID) => {
                Value::Number(n.clone())
            }
            _ => {
                return bad(
                    &Value::Null,
                    "a message needs a `request_id`: a string of at most 128 characters, or an integer of magnitude at most 2^53 - 1",
                );
            }
        };
        if let Some(key) = super::extract::duplicate_key(text.as_bytes()) {
            return bad(
                &request_id,
                &super::extract::describe(&format!(
                    "duplicate key {key:?}: each key may appear once in an object"
                )),
            );
        }
        let kind = message
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (state, session_id, user) = (&self.state, self.session_id, &self.user);
        let result = match kind.as_deref() {
            Some("state.get") => {
                questboard_core::state::read_as_member(&state.pool, session_id, user)
                    .await
                    .map_err(Error::from)
                    .and_then(|snapshot| {
                        serde_json::to_value(super::state::StateView::from(snapshot))
                            .map_err(Error::internal)
                    })
            }
            Some("state.update") => {
                match serde_json::from_value::<super::state::StateUpdateInput>(message) {
                    Ok(input) => super::state::apply(state, session_id, user, &input)
                        .await
                        .and_then(|done| serde_json::to_value(done).map_err(Error::internal)),
                    Err(err) => Err(Error::Unprocessable(format!(
                        "a state.update needs `version` (integer) and `operations` (array), and may have `id` (string): {}",
                        super::extract::describe(&err.to_string())
                    ))),
                }
            }
            Some("state.proposal.approve") => {
                match serde_json::from_value::<ProposalDecision>(message) {
                    Ok(decision) => super::proposals::approve(
                        state,
                        session_id,
                        user,
                        decision.proposal_id,
                        decision.version,
                    )
                    .await
                    .and_then(|done| serde_json::to_value(done).map_err(Error::internal)),
                    Err(err) => Err(decision_shape(&err)),
                }
            }
            Some("state.proposal.reject") => {
                match serde_json::from_value::<ProposalDecision>(message) {
                    Ok(decision) => super::proposals::reject(
                        state,
                        session_id,
                        user,
                        decision.proposal_id,
                        decision.reason.as_deref(),
                    )
                    .await
                    .and_then(|held| {
                        serde_json::to_value(serde_json::json!({ "proposal": held }))
                            .map_err(Error::internal)
                    }),
                    Err(err) => Err(decision_shape(&err)),
                }
            }
            Some("auth") => self.reauthenticate(message.get("token")).await,
            _ => {
                return bad(
                    &request_id,
                    "unknown `type`: use state.get, state.update, state.proposal.approve, state.proposal.reject or auth",
                );
            }
        };
        match result {
            Ok(Value::Object(mut fields)) => {
                fields.insert("type".into(), json!("reply"));
                fields.insert("request_id".into(), request_id);
                fields.insert("ok".into(), json!(true));
                Value::Object(fields)
            }
            Ok(_) => bad(&request_id, "unexpected reply"),
            Err(err) => {
                if let Error::Internal(cause) = &err {
                    tracing::error!(error = %cause, "a socket message failed");
                }
                json!({"type": "reply", "request_id": request_id, "ok": false, "error": err.detail()})
            }
        }
    }

    /// `{"type": "auth", "token"}`: a fresh token for the same user moves
    /// the socket's expiry to that token's. Anything else leaves the socket
    /// as it was (it still closes when the old token expires).
    async fn reauthenticate(
        &mut self,
        token: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let token = token.and_then(serde_json::Value::as_str).ok_or_else(|| {
            Error::Unprocessable("an auth message needs `token` (a string)".into())
        })?;
        let caller = match self.state.auth.verify_caller(token).await {
            Ok(caller) => caller,
            Err(err) => {
                crate::auth::count_refusal(err);
                return Err(err.into());
            }
        };
        if caller.user != self.user {
            return Err(Error::Forbidden(
                "the token is for another user: open a new socket".into(),
            ));
        }
        self.expires = expiry(caller.expires_at);
        Ok(serde_json::json!({ "expires_at": caller.expires_at }))
    }
}

/// How a socket whose read failed ends: with the standard close code when
/// the client broke a rule (the connection still works then), silently
/// when the connection itself broke.
fn read_failed(err: axum::Error) -> End {
    use tungstenite::error::{Error as WsError, ProtocolError};
    match err.into_inner().downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => {
            End::Close(1009, "message too big: at most 64 KiB", "message_too_big")
        }
        Some(WsError::Utf8(_)) => {
            End::Close(1007, "text message is not valid UTF-8", "invalid_payload")
        }
        Some(WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing,
        )) => End::Gone,
        Some(WsError::Protocol(_)) => End::Close(1002, "protocol error", "protocol_error"),
        _ => End::Gone,
    }
}
