//! How a worker moves turns along: batched, fenced steps.
//!
//! A [`Step`] is everything one session's lease holder writes at one point
//! of its drain: how the turn it just ran ended ([`Settle`]), which turn it
//! starts next, and whether it now lets the session go ([`Release`]).
//! Settling turn *k* and starting turn *k + 1* are one step, so a session
//! in full flow costs one write per turn. [`advance`] applies the steps of
//! many sessions in one statement: the worker's committer batches whatever
//! steps its sessions are waiting on, so a batch is one round trip and one
//! commit however many sessions it carries.
//!
//! Every step is fenced: it applies only while its lease token is live, and
//! the lease row is locked `FOR SHARE` until commit, so a takeover waits for
//! it and a holder that lost its lease writes nothing. A settle applies only
//! to an unfinished turn, so a reply is recorded once. Each applied change
//! appends its event (`turn.completed`, `turn.failed`, `turn.retrying`,
//! `turn.requeued`, `turn.started`), numbered under the session row's lock.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Result, Turn};
use crate::events::Event;
use crate::jobs;
use crate::leases::{self, Lease, SESSION_SCOPE};
use crate::sessions::{AiAuthority, AiVerdict, Role};
use crate::state::{self, Proposal, Resolved, proposal, review};
use crate::usage::TokenUsage;

/// How a run of a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// The reply, recorded for good.
    Completed {
        /// The game master's reply.
        output: String,
        /// The game-state change it asks for, if any (applied or refused
        /// when the reply is recorded, see [`advance_alone`]).
        state: Option<Proposal>,
        /// Prompts of the images it asks to show (generated after the
        /// reply is recorded; see `workers::committer`).
        images: Vec<String>,
        /// The tokens the provider counted for it, if it reported them
        /// (recorded on the turn and added to `usage_daily`).
        usage: Option<TokenUsage>,
    },
    /// Failed for good; the session goes on with its next turn.
    Failed {
        /// Why (shown to players; no secrets).
        reason: String,
    },
    /// Failed, to run again after `delay`; the session waits for it.
    Retrying {
        /// Why.
        reason: String,
        /// How long to wait.
        delay: Duration,
    },
    /// Interrupted by worker shutdown: queued again, the attempt not counted.
    HandedBack,
}

impl Settle {
    fn kind(&self) -> &'static str {
        match self {
            Settle::Completed { .. } => "completed",
            Settle::Failed { .. } => "failed",
            Settle::Retrying { .. } => "retrying",
            Settle::HandedBack => "requeued",
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Settle::Completed { output, .. } => Some(output),
            Settle::Failed { reason } | Settle::Retrying { reason, .. } => Some(reason),
            Settle::HandedBack => None,
        }
    }

    /// Whether the turn is finished after this (the session may go on).
    pub fn finishes(&self) -> bool {
        matches!(self, Settle::Completed { .. } | Settle::Failed { .. })
    }

    /// The game-state change a completed reply asks for.
    pub fn proposal(&self) -> Option<&Proposal> {
        match self {
            Settle::Completed { state, .. } => state.as_ref(),
            _ => None,
        }
    }

    /// The token counts of a completed reply.
    pub fn usage(&self) -> Option<&TokenUsage> {
        match self {
            Settle::Completed { usage, .. } => usage.as_ref(),
            _ => None,
        }
    }

    /// The images a completed reply asks for.
    pub fn images(&self) -> &[String] {
        match self {
            Settle::Completed { images, .. } => images,
            _ => &[],
        }
    }

    /// Whether the step recording this must run alone, in its own
    /// transaction ([`advance_alone`]): its reply changes the game state
    /// or asks for images.
    pub fn runs_alone(&self) -> bool {
        self.proposal().is_some() || !self.images().is_empty()
    }
}

/// The end of a drain: the lease is released and the session leaves the
/// runnable index if it has no unfinished turn, or goes back in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// Every turn of the session up to this seq is finished (after this
    /// step). The session is idle if no turn was submitted after it.
    pub done_through: i64,
    /// When the session's next turn may run (its retry time); default now.
    /// A retry settled in this step sets it by itself.
    pub ready_at: Option<DateTime<Utc>>,
}

/// One session's writes at one point of its drain.
#[derive(Debug, Clone)]
pub struct Step {
    /// The session (the key of its lease).
    pub session_id: Uuid,
    /// The lease token every write is fenced by.
    pub token: i64,
    /// How the turn just run ended: (turn id, job id, outcome).
    pub settle: Option<(Uuid, String, Settle)>,
    /// The turn to start next: (turn id, job id). Its attempt is counted.
    pub start: Option<(Uuid, String)>,
    /// Let the session go.
    pub release: Option<Release>,
}

impl Step {
    /// Whether it settles a turn whose step [runs alone](Settle::runs_alone).
    pub fn runs_alone(&self) -> bool {
        self.settle.as_ref().is_some_and(|(_, _, s)| s.runs_alone())
    }

    /// An empty step under `lease` on session `session_id`.
    pub fn new(session_id: Uuid, lease: &Lease) -> Self {
        Self {
            session_id,
            token: lease.token,
            settle: None,
            start: None,
            release: None,
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    /// False: the lease was no longer held with the step's token; nothing
    /// was written.
    pub fenced_in: bool,
    /// The settle applied (false: the turn was already finished).
    pub settled: bool,
    /// The attempt number of the started turn (None: not started, it was
    /// already finished).
    pub attempt: Option<i32>,
    /// The seq of the started turn's `turn.started` event.
    pub started_seq: Option<i64>,
    /// The settled reply's images may be asked for now (the session lets
    /// the AI show them for this turn); set by [`advance_alone`].
    pub images: bool,
    /// When a settled retry will run.
    pub retry_at: Option<DateTime<Utc>>,
    /// The release removed the session from the runnable index (idle).
    pub retired: bool,
    /// The events appended, in seq order, to publish after commit.
    pub events: Vec<Event>,
}

/// Parameters are parallel arrays, one element per step:
/// `$1` session, `$2` token, `$3` settled turn, `$4` its job, `$5` settle
/// kind, `$6` text (reply or error), `$7` retry delay in ms, `$8` started
/// turn, `$9` its job, `$10` release, `$11` done_through, `$12` ready_at,
/// `$13` the reply's token usage (`{provider, model, prompt_tokens,
/// completion_tokens}`, or null).
///
/// Shape, for a cost linear in the number of steps: `plan` decides what
/// applies (fence, turn states) by index lookups; `seqs` locks each
/// session row, numbers its events and carries the whole plan forward in
/// its RETURNING; every write after that reads `seqs` once and reaches its
/// rows through their primary key. No two CTEs are joined with each other:
/// the planner cannot size `unnest` and would pick nested loops, which made
/// a batch of 500 steps quadratic (450 ms instead of a few). The lookups in
/// `plan` are LATERAL, one index probe per step whatever the planner
/// believes about table sizes: with stale statistics it once scanned every
/// lease for every step, halving throughput.
///
/// Lock order: steps are applied in session-id order and `plan` locks each
/// session's lease and row in that order before anything else is written,
/// as [`super::submit_many`] locks session rows and
/// [`leases::renew_all`] locks leases: statements that share sessions (a
/// worker's steps, its lease renewals, an API's submissions) wait for each
/// other instead of deadlocking.
///
/// A step happens at one moment (`at`): a turn settled and the next one
/// started by the same step finish and start at the same time, never in
/// the wrong order.
///
/// Within the fence nobody else writes these turns and jobs, so what `plan`
/// read still holds when the writes happen: a started turn's attempt is the
/// one read plus one, a retry's time is `now()` plus its delay (`now()` is
/// fixed for the statement).
///
/// Starting a run writes only the turn (status, attempt: one HOT update);
/// settling writes the turn and its job row in `apalis.jobs` (see
/// [`jobs::sql::settle`]), and a completed reply with usage adds it to its
/// day's row of `usage_daily` (one row per session, day, author, provider
/// and model: a batch holds one step per session, so no two of its
/// upserts meet the same row).
///
/// Result: one row per step that was fenced in (`row = 'step'`), then one
/// per appended event (`row = 'event'`).
///
/// [`ADVANCE_WITH_STATE_SQL`] is the same statement for steps whose reply
/// changes the game state ([`super::super::state::proposal`]), run alone in
/// a transaction that has locked the session's state row: three more
/// parameters, `$14` the turn's `state_change` record, `$15` the new
/// document (null: refused, nothing to write) and `$16` the
/// `state.updated` event's data. The state is written only if the reply
/// is (`do_state` needs `do_settle`): a reply and its change are recorded
/// together, once, or not at all. `state.updated` comes first, so a member
/// who sees the reply already has the state it made.
static ADVANCE_SQL: LazyLock<String> = LazyLock::new(|| advance_sql(false));

/// [`ADVANCE_SQL`] for a step whose reply changes the game state.
static ADVANCE_WITH_STATE_SQL: LazyLock<String> = LazyLock::new(|| advance_sql(true));

fn advance_sql(with_state: bool) -> String {
    let (state_input, state_names, do_state, state_write, state_event) = if with_state {
        (
            ", $14::jsonb[], $15::text[], $16::jsonb[]",
            ", state_change, state_doc, state_event",
            "(st.seq IS NOT NULL AND i.settle_kind = 'completed' AND i.state_doc IS NOT NULL)
                        AS do_state",
            "state_written AS (
                 UPDATE game_states g
                 SET state = s.state_doc::jsonb, version = g.version + 1, updated_at = s.at
                 FROM seqs s WHERE s.do_state AND g.session_id = s.session_id
             ),",
            "SELECT s.session_id, s.first_seq, 'state.updated', s.state_event
             FROM seqs s WHERE s.do_state
             UNION ALL",
        )
    } else {
        (
            "",
            "",
            "false AS do_state, NULL::jsonb AS state_change",
            "",
            "",
        )
    };
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[],
                                  $6::text[], $7::float8[], $8::uuid[], $9::text[], $10::bool[],
                                  $11::bigint[], $12::timestamptz[], $13::jsonb[]{state_input})
                 AS i(session_id, token, settle_turn, settle_job, settle_kind, settle_text,
                      delay_ms, start_turn, start_job, release, done_through, ready_at,
                      usage{state_names})
         ),
         plan AS (
             SELECT i.*,
                    st.seq IS NOT NULL AS do_settle, st.seq AS settle_seq,
                    st.author_user_id AS settle_author,
                    CASE WHEN i.settle_kind = 'requeued' THEN greatest(st.attempts - 1, 0)
                         ELSE st.attempts END AS settle_attempts,
                    tt.seq IS NOT NULL AS do_start, tt.seq AS start_seq,
                    tt.attempts + 1 AS attempt, {do_state},
                    now() + make_interval(secs => coalesce(i.delay_ms, 0) / 1000.0) AS retry_at,
                    clock_timestamp() AS at
             FROM input i
             CROSS JOIN LATERAL (
                 SELECT l.token FROM leases l WHERE {live} FOR SHARE
             ) fence
             CROSS JOIN LATERAL (
                 SELECT c.id FROM campaign_sessions c WHERE c.id = i.session_id FOR NO KEY UPDATE
             ) locked
             LEFT JOIN LATERAL (
                 SELECT t.seq, t.attempts, t.author_user_id FROM turns t
                 WHERE t.id = i.settle_turn
                   AND (t.status = 'running'
                        OR (t.status = 'queued' AND i.settle_kind <> 'requeued'))
             ) st ON true
             LEFT JOIN LATERAL (
                 SELECT t.seq, t.attempts FROM turns t
                 WHERE t.id = i.start_turn AND t.status IN ('queued', 'running')
             ) tt ON true
         ),
         seqs AS (
             UPDATE campaign_sessions c
             SET next_event_seq = c.next_event_seq + p.do_state::int + p.do_settle::int
                                  + p.do_start::int
             FROM plan p WHERE c.id = p.session_id
             RETURNING p.*, c.next_event_seq - p.do_state::int - p.do_settle::int
                            - p.do_start::int AS first_seq,
                       c.next_turn_seq
         ),
         settled AS (
             UPDATE turns t
             SET status = CASE s.settle_kind WHEN 'completed' THEN 'completed'
                                             WHEN 'failed' THEN 'failed' ELSE 'queued' END,
                 output = CASE s.settle_kind WHEN 'completed' THEN s.settle_text ELSE t.output END,
                 error = CASE s.settle_kind WHEN 'completed' THEN NULL
                                            WHEN 'requeued' THEN t.error ELSE s.settle_text END,
                 state_change = CASE s.settle_kind WHEN 'completed' THEN s.state_change
                                                   ELSE t.state_change END,
                 usage = CASE s.settle_kind WHEN 'completed' THEN s.usage ELSE t.usage END,
                 completed_at = CASE WHEN s.settle_kind IN ('completed', 'failed')
                                     THEN s.at END,
                 fence_token = CASE WHEN s.settle_kind IN ('completed', 'failed')
                                    THEN s.token ELSE t.fence_token END,
                 attempts = s.settle_attempts,
                 run_at = CASE s.settle_kind WHEN 'retrying' THEN s.retry_at ELSE t.run_at END
             FROM seqs s
             WHERE s.do_settle AND t.id = s.settle_turn
         ),
         settled_jobs AS ({settle_jobs}),
         counted AS (
             INSERT INTO usage_daily AS u (session_id, day, user_id, provider, model, turns,
                                           prompt_tokens, completion_tokens)
             SELECT s.session_id, (s.at AT TIME ZONE 'UTC')::date, s.settle_author,
                    s.usage ->> 'provider', s.usage ->> 'model', 1,
                    greatest((s.usage ->> 'prompt_tokens')::bigint, 0),
                    greatest((s.usage ->> 'completion_tokens')::bigint, 0)
             FROM seqs s
             WHERE s.do_settle AND s.settle_kind = 'completed' AND s.usage IS NOT NULL
             ON CONFLICT (session_id, day, user_id, provider, model) DO UPDATE
             SET turns = u.turns + 1,
                 prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
                 completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens
         ),
         {state_write}
         started AS (
             UPDATE turns t
             SET status = 'running', started_at = s.at, attempts = s.attempt
             FROM seqs s
             WHERE s.do_start AND t.id = s.start_turn
         ),
         events AS (
             INSERT INTO session_events (session_id, seq, type, data)
             {state_event}
             SELECT s.session_id, s.first_seq + s.do_state::int, 'turn.' || s.settle_kind,
                    CASE s.settle_kind
                        WHEN 'completed' THEN jsonb_build_object('turn_id', s.settle_turn,
                                                                 'seq', s.settle_seq,
                                                                 'output', s.settle_text)
                            || CASE WHEN s.state_change IS NULL THEN '{{}}'::jsonb
                                    ELSE jsonb_build_object('state_change', s.state_change) END
                        WHEN 'failed' THEN jsonb_build_object('turn_id', s.settle_turn,
                                                              'seq', s.settle_seq,
                                                              'error', s.settle_text)
                        WHEN 'retrying' THEN jsonb_build_object('turn_id', s.settle_turn,
                                                                'seq', s.settle_seq,
                                                                'error', s.settle_text,
                                                                'retry_at', s.retry_at)
                        ELSE jsonb_build_object('turn_id', s.settle_turn, 'seq', s.settle_seq)
                    END
             FROM seqs s WHERE s.do_settle
             UNION ALL
             SELECT s.session_id, s.first_seq + s.do_state::int + s.do_settle::int, 'turn.started',
                    jsonb_build_object('turn_id', s.start_turn, 'seq', s.start_seq,
                                       'attempt', s.attempt)
             FROM seqs s WHERE s.do_start
             RETURNING session_id, seq, type, at, data
         ),
         retired AS (
             DELETE FROM session_queue q USING seqs s
             WHERE s.release AND q.session_id = s.session_id
               AND s.next_turn_seq - 1 <= s.done_through
         ),
         requeued AS (
             INSERT INTO session_queue AS q (session_id, ready_at, from_seq)
             SELECT s.session_id,
                    greatest(now(), coalesce(
                        CASE WHEN s.do_settle AND s.settle_kind = 'retrying' THEN s.retry_at END,
                        s.ready_at, now())),
                    s.done_through + 1
             FROM seqs s
             WHERE s.release AND s.next_turn_seq - 1 > s.done_through
             ON CONFLICT (session_id) DO UPDATE
             SET ready_at = EXCLUDED.ready_at, from_seq = EXCLUDED.from_seq
         ),
         released AS (
             UPDATE leases l SET holder = NULL, expires_at = clock_timestamp()
             FROM seqs s
             WHERE s.release AND l.scope = 'session' AND l.key = s.session_id::text
               AND l.token = s.token
         )
         SELECT 'step' AS row, s.session_id, s.do_settle AS settled,
                CASE WHEN s.do_start THEN s.attempt END AS attempt,
                CASE WHEN s.do_settle AND s.settle_kind = 'retrying' THEN s.retry_at END AS retry_at,
                s.release AND s.next_turn_seq - 1 <= s.done_through AS retired,
                NULL::bigint AS seq, NULL::text AS type, NULL::timestamptz AS at, NULL::jsonb AS data
         FROM seqs s
         UNION ALL
         SELECT 'event', e.session_id, NULL, NULL, NULL, NULL, e.seq, e.type, e.at, e.data
         FROM events e",
        live = leases::live("l", "'session'", "i.session_id::text", "i.token"),
        settle_jobs = jobs::sql::settle(
            "(SELECT settle_job AS job_id, settle_kind AS kind, settle_text AS text, retry_at,
                     settle_attempts AS attempts
              FROM seqs WHERE do_settle)"
        ),
    )
}

#[derive(sqlx::FromRow)]
struct OutcomeRow {
    row: String,
    session_id: Uuid,
    settled: Option<bool>,
    attempt: Option<i32>,
    retry_at: Option<DateTime<Utc>>,
    retired: Option<bool>,
    seq: Option<i64>,
    #[sqlx(rename = "type")]
    kind: Option<String>,
    at: Option<DateTime<Utc>>,
    data: Option<serde_json::Value>,
}

/// Applies `steps`, at most one per session, in one statement; returns
/// their outcomes in the same order. A step whose lease is no longer live
/// writes nothing (`fenced_in` false); the others apply regardless.
pub async fn advance(pool: &PgPool, steps: &[Step]) -> Result<Vec<StepOutcome>> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    if steps.iter().any(Step::runs_alone) {
        return Err(Error::Invalid(
            "a step whose reply changes the game state or asks for images goes through \
             advance_alone"
                .into(),
        ));
    }
    run_advance(pool, &ADVANCE_SQL, steps, None).await
}

/// The game-state parameters of [`ADVANCE_WITH_STATE_SQL`] for one step.
struct StateInputs {
    change: Option<serde_json::Value>,
    document: Option<String>,
    event: Option<serde_json::Value>,
}

/// Applies one step that [runs alone](Settle::runs_alone) in `tx`, the
/// caller's transaction (the caller asks for the reply's images when the
/// outcome says they may be, and commits).
///
/// What the reply asks for (a state change, images) is first weighed by
/// the session's `ai_authority` and the role of the turn's author
/// ([`AiAuthority::for_turn_by`]):
/// - **apply**: the session's state is locked, the proposal resolved
///   against it ([`proposal::resolve`]: applied, or refused with why) and
///   the step applied with the change (see `ADVANCE_SQL`); the images may
///   be asked for ([`StepOutcome::images`]);
/// - **hold**: the change and the images are recorded as a proposal for a
///   game master's review ([`review::record`], `state.proposed`), nothing
///   is applied (refused instead while the session holds
///   [`review::MAX_PENDING`] undecided ones);
/// - **refuse**: the change is refused (`AI_NOT_ALLOWED`) and the images
///   dropped.
///
/// Whatever it does is written only if the reply is: a run that lost its
/// lease, or a turn already finished by an earlier run, writes nothing.
/// Run the whole transaction again on a transient error.
pub async fn advance_alone(
    tx: &mut sqlx::PgConnection,
    step: &Step,
    limits: state::Limits,
) -> Result<StepOutcome> {
    let Some((turn_id, _, settle)) = &step.settle else {
        return Err(Error::Invalid(
            "a step run alone needs a settled turn".into(),
        ));
    };
    // What the session lets the AI do with what this reply asks for.
    let setting: Option<(AiAuthority, Option<Role>)> = sqlx::query_as(
        "SELECT c.ai_authority, m.role FROM turns t
         JOIN campaign_sessions c ON c.id = t.session_id
         LEFT JOIN campaign_session_members m
                ON m.session_id = t.session_id AND m.user_id = t.author_user_id
         WHERE t.id = $1",
    )
    .bind(turn_id)
    .fetch_optional(&mut *tx)
    .await?;
    let verdict = setting.map_or(AiVerdict::Refuse, |(authority, role)| {
        authority.for_turn_by(role)
    });
    let mut held = None;
    let resolved = match (verdict, settle.proposal()) {
        (AiVerdict::Apply, Some(proposed)) => {
            // The lock a game master's update takes: their updates and this
            // one apply one after the other, each against the other's result.
            let current: Option<(i64, serde_json::Value)> = sqlx::query_as(
                "SELECT version, state FROM game_states WHERE session_id = $1 FOR UPDATE",
            )
            .bind(step.session_id)
            .fetch_optional(&mut *tx)
            .await?;
            current.and_then(|current| proposal::resolve(proposed, current, *turn_id, limits))
        }
        (AiVerdict::Apply, None) => None,
        (AiVerdict::Hold, proposed) => {
            let empty = Proposal::Operations(Vec::new());
            let proposed = proposed.unwrap_or(&empty);
            if review::pending(&mut *tx, step.session_id).await? >= review::MAX_PENDING {
                proposal::refuse(
                    proposed,
                    "TOO_MANY_PROPOSALS",
                    "the session already holds the most proposals waiting for a game master",
                )
            } else {
                let id = Uuid::now_v7();
                let resolved = proposal::hold(proposed, id, limits);
                let well_formed = resolved.as_ref().is_none_or(|r| r.change.error.is_none());
                if well_formed && (resolved.is_some() || !settle.images().is_empty()) {
                    held = Some(id);
                }
                resolved
            }
        }
        (AiVerdict::Refuse, proposed) => {
            if !settle.images().is_empty() {
                tracing::info!(%turn_id, "the session does not let the AI game master show images; dropped");
            }
            proposed.and_then(|proposed| {
                proposal::refuse(
                    proposed,
                    "AI_NOT_ALLOWED",
                    "this session does not let the AI game master change the game state",
                )
            })
        }
    };
    let inputs = match resolved {
        Some(Resolved { change, write }) => {
            let (document, event) = write.map_or((None, None), |(d, e)| (Some(d), Some(e)));
            StateInputs {
                change: Some(
                    serde_json::to_value(change).map_err(|e| Error::Invalid(e.to_string()))?,
                ),
                document,
                event,
            }
        }
        None => StateInputs {
            change: None,
            document: None,
            event: None,
        },
    };
    let mut outcomes = run_advance(
        &mut *tx,
        &ADVANCE_WITH_STATE_SQL,
        std::slice::from_ref(step),
        Some(inputs),
    )
    .await?;
    let mut outcome = outcomes.pop().unwrap_or_default();
    if outcome.settled {
        outcome.images = verdict == AiVerdict::Apply;
        if let Some(id) = held {
            let operations = match settle.proposal() {
                Some(Proposal::Operations(raw)) => raw.as_slice(),
                _ => &[],
            };
            let event = review::record(
                &mut *tx,
                review::NewHeld {
                    id,
                    session_id: step.session_id,
                    turn_id: *turn_id,
                    operations,
                    images: settle.images(),
                },
            )
            .await
            .map_err(|e| match e {
                state::Error::Database(e) => Error::Database(e),
                other => Error::Invalid(other.to_string()),
            })?;
            outcome.events.push(event);
        }
    }
    Ok(outcome)
}

/// Binds `steps` (and, for one step, its state inputs) to `sql` and reads
/// the outcomes back in the steps' order.
async fn run_advance<'c, E>(
    executor: E,
    sql: &'static str,
    steps: &[Step],
    state: Option<StateInputs>,
) -> Result<Vec<StepOutcome>>
where
    E: sqlx::PgExecutor<'c>,
{
    // Session-id order is the lock order (see ADVANCE_SQL).
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by_key(|step| step.session_id);
    let mut seen = std::collections::HashSet::with_capacity(steps.len());
    let mut sessions = Vec::with_capacity(steps.len());
    let mut tokens = Vec::with_capacity(steps.len());
    let mut settle_turns = Vec::with_capacity(steps.len());
    let mut settle_jobs = Vec::with_capacity(steps.len());
    let mut kinds = Vec::with_capacity(steps.len());
    let mut texts = Vec::with_capacity(steps.len());
    let mut delays = Vec::with_capacity(steps.len());
    let mut start_turns = Vec::with_capacity(steps.len());
    let mut start_jobs = Vec::with_capacity(steps.len());
    let mut releases = Vec::with_capacity(steps.len());
    let mut done_through = Vec::with_capacity(steps.len());
    let mut ready_at = Vec::with_capacity(steps.len());
    let mut usage = Vec::with_capacity(steps.len());
    for step in sorted {
        if !seen.insert(step.session_id) {
            return Err(Error::Invalid(format!(
                "two steps for session {} in one batch",
                step.session_id
            )));
        }
        sessions.push(step.session_id);
        tokens.push(step.token);
        let (turn, job, settle) = match &step.settle {
            Some((turn, job, settle)) => (Some(*turn), Some(job.as_str()), Some(settle)),
            None => (None, None, None),
        };
        settle_turns.push(turn);
        settle_jobs.push(job);
        kinds.push(settle.map(Settle::kind));
        texts.push(settle.and_then(Settle::text));
        delays.push(match settle {
            Some(Settle::Retrying { delay, .. }) => Some(delay.as_secs_f64() * 1000.0),
            _ => None,
        });
        start_turns.push(step.start.as_ref().map(|(turn, _)| *turn));
        start_jobs.push(step.start.as_ref().map(|(_, job)| job.as_str()));
        releases.push(step.release.is_some());
        done_through.push(step.release.map(|r| r.done_through));
        ready_at.push(step.release.and_then(|r| r.ready_at));
        usage.push(
            settle
                .and_then(Settle::usage)
                .map(|u| serde_json::to_value(u).map_err(|e| Error::Invalid(e.to_string())))
                .transpose()?,
        );
    }
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&sessions)
        .bind(&tokens)
        .bind(&settle_turns)
        .bind(&settle_jobs)
        .bind(&kinds)
        .bind(&texts)
        .bind(&delays)
        .bind(&start_turns)
        .bind(&start_jobs)
        .bind(&releases)
        .bind(&done_through)
        .bind(&ready_at)
        .bind(&usage);
    if let Some(state) = state {
        query = query
            .bind([state.change])
            .bind([state.document])
            .bind([state.event]);
    }
    let rows: Vec<OutcomeRow> = query.fetch_all(executor).await?;
    let mut outcomes: std::collections::HashMap<Uuid, StepOutcome> =
        std::collections::HashMap::with_capacity(steps.len());
    for r in rows {
        if r.row == "step" {
            let outcome = outcomes.entry(r.session_id).or_default();
            outcome.fenced_in = true;
            outcome.settled = r.settled.unwrap_or(false);
            outcome.attempt = r.attempt;
            outcome.retry_at = r.retry_at;
            outcome.retired = r.retired.unwrap_or(false);
        } else if let (Some(seq), Some(kind), Some(at), Some(data)) = (r.seq, r.kind, r.at, r.data)
        {
            outcomes
                .entry(r.session_id)
                .or_default()
                .events
                .push(Event {
                    seq,
                    kind,
                    session_id: r.session_id,
                    at,
                    data,
                });
        }
    }
    Ok(steps
        .iter()
        .map(|step| {
            let mut outcome = outcomes.remove(&step.session_id).unwrap_or_default();
            outcome.events.sort_by_key(|e| e.seq);
            outcome.started_seq = outcome
                .events
                .iter()
                .find(|e| e.kind == "turn.started")
                .map(|e| e.seq);
            outcome
        })
        .collect())
}

/// Applies one step and refuses it as [`Error::Fenced`] if the lease is lost.
async fn advance_one(pool: &PgPool, lease: &Lease, step: Step) -> Result<StepOutcome> {
    let mut outcomes = advance(pool, std::slice::from_ref(&step)).await?;
    let outcome = outcomes.pop().unwrap_or_default();
    if !outcome.fenced_in {
        return Err(Error::Fenced(leases::Error::Fenced {
            scope: SESSION_SCOPE.to_owned(),
            key: lease.key.clone(),
            token: lease.token,
        }));
    }
    Ok(outcome)
}

fn step_for(turn: &Turn, lease: &Lease) -> Step {
    Step::new(turn.session_id, lease)
}

/// Marks `turn` running and counts its job's attempt, under `lease`
/// (appending `turn.started`). Returns the attempt number (0 if the turn
/// was already finished) and the event.
pub async fn start(pool: &PgPool, turn: &Turn, lease: &Lease) -> Result<(i32, Option<Event>)> {
    let mut step = step_for(turn, lease);
    step.start = Some((turn.id, turn.job_id.clone()));
    let outcome = advance_one(pool, lease, step).await?;
    Ok((
        outcome.attempt.unwrap_or(0),
        outcome.events.into_iter().next(),
    ))
}

async fn settle_one(
    pool: &PgPool,
    turn: &Turn,
    lease: &Lease,
    settle: Settle,
) -> Result<StepOutcome> {
    let mut step = step_for(turn, lease);
    step.settle = Some((turn.id, turn.job_id.clone(), settle));
    advance_one(pool, lease, step).await
}

/// Records the reply, under `lease` (appending `turn.completed`). Returns
/// false if the turn was already finished (nothing written).
pub async fn complete(
    pool: &PgPool,
    turn: &Turn,
    lease: &Lease,
    output: &str,
) -> Result<(bool, Option<Event>)> {
    let outcome = settle_one(
        pool,
        turn,
        lease,
        Settle::Completed {
            output: output.to_owned(),
            state: None,
            images: Vec::new(),
            usage: None,
        },
    )
    .await?;
    Ok((outcome.settled, outcome.events.into_iter().next()))
}

/// Records a failed attempt to retry after `delay`, under `lease`
/// (appending `turn.retrying`).
pub async fn retry_later(
    pool: &PgPool,
    turn: &Turn,
    lease: &Lease,
    error: &str,
    delay: Duration,
) -> Result<Option<Event>> {
    let settle = Settle::Retrying {
        reason: error.to_owned(),
        delay,
    };
    Ok(settle_one(pool, turn, lease, settle)
        .await?
        .events
        .into_iter()
        .next())
}

/// Records a final failure, under `lease` (appending `turn.failed`).
pub async fn fail(pool: &PgPool, turn: &Turn, lease: &Lease, error: &str) -> Result<Option<Event>> {
    let settle = Settle::Failed {
        reason: error.to_owned(),
    };
    Ok(settle_one(pool, turn, lease, settle)
        .await?
        .events
        .into_iter()
        .next())
}

/// Hands an interrupted turn back (worker shutdown), under `lease`: queued
/// again (appending `turn.requeued`), the attempt not counted.
pub async fn hand_back(pool: &PgPool, turn: &Turn, lease: &Lease) -> Result<Option<Event>> {
    Ok(settle_one(pool, turn, lease, Settle::HandedBack)
        .await?
        .events
        .into_iter()
        .next())
}
