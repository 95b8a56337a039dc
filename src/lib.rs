//! # questboard
//!
//! A job-queue driven background processing platform for AI game-master
//! campaign apps. This crate is the one binary (`questboard serve | work |
//! schedule | dev | migrate | admin | token`) and the HTTP/WebSocket API; the domain
//! lives in `questboard-core` (re-exported as [`core`]) and the worker
//! runtime in `questboard-workers`.
//!
//! Map of the crate:
//!
//! - [`cli`]: the subcommands and what each one starts; [`cli::admin`] is
//!   `questboard admin`, operators' commands against the database (the
//!   HTTP admin routes are [`http::admin`]).
//! - [`bridge`]: the bus's session channels delivered to this process's WebSockets.
//! - [`private_postgres`]: the Postgres `questboard dev` runs for itself
//!   when `DATABASE_URL` is unset.
//! - [`config`]: the one typed configuration, read from the environment.
//! - [`telemetry`]: logging, the Prometheus recorder and the `/metrics` listener.
//! - [`auth`]: verifying bearer JWTs (HS256 secret or RS256 JWKS) and minting
//!   development tokens.
//! - [`app`]: wiring a process together: pools, clients, listeners, shutdown.
//! - [`http`]: the axum routers, one module per API area, the error type and
//!   the extractors every handler uses.
//!
//! Requests flow `http::router` -> an area's handler -> a `core` domain
//! function (which owns the SQL) -> back through `http::error::Error`.

pub use questboard_core as core;

pub mod app;
pub mod auth;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod http;
pub mod private_postgres;
pub mod telemetry;
