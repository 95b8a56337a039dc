//! # questboard-workers
//!
//! Everything that runs jobs, reused by the `questboard work`, `questboard
//! schedule` and `questboard dev` commands, the benchmark and the tests.
//! Depends on `questboard-core`, never on the HTTP API.
//!
//! - [`jobs`]: one handler per job kind (`jobs/turn.rs`, `jobs/prune.rs`,
//!   `jobs/reconcile.rs`), the [`jobs::Handler`] trait and the one list
//!   that registers every kind ([`jobs::registry`]).
//! - [`runtime`]: the worker: a session lane that drains campaign sessions'
//!   turns in order under their lease, and a plain lane for every other
//!   kind, each run under a job lease; shared shutdown and grace.
//! - [`committer`]: group commit: the turn steps of every busy session go to
//!   Postgres in one statement.
//! - [`renewals`]: one statement renews every lease of a scope the worker holds.
//! - [`scheduler`]: the cron scheduler, one leader at a time, each tick
//!   enqueued exactly once.
//! - [`providers`]: the game masters: the built-in scripted one and any
//!   OpenAI-compatible server.

pub mod committer;
pub mod jobs;
mod operator_run;
pub mod providers;
pub mod renewals;
pub mod runtime;
pub mod scheduler;
mod sweep;
