//! # questboard-workers
//!
//! Everything that runs jobs, reused by the `questboard work` and
//! `questboard dev` commands and by the tests. Depends on
//! `questboard-core`, never on the HTTP API.
//!
//! - [`runtime`]: the worker: claims sessions with work under their lease,
//!   drains their turns in order, shuts down gracefully.
//! - [`committer`]: group commit: the turn steps of every busy session go to
//!   Postgres in one statement.
//! - [`renewals`]: one statement renews every lease the worker holds.
//! - [`jobs`]: one handler per job kind (`jobs/turn.rs`) and the registry.
//! - [`providers`]: the game masters: the built-in scripted one and any
//!   OpenAI-compatible server.

pub mod committer;
pub mod jobs;
pub mod providers;
pub mod renewals;
pub mod runtime;
