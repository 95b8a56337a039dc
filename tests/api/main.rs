//! questboard's integration tests: one binary, one module per area, each
//! test against a fresh Postgres database with migrations applied, real
//! Redis, and the API bound to port 0 and called over real HTTP.

// Tests fail loudly on purpose: panicking on unexpected input is their job.
#![allow(
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod admin;
mod ai_authority;
mod asset_migration;
mod audit;
mod auth;
mod batches;
mod connections;
mod console;
mod dashboards;
mod dev_probe;
mod fake_llm;
mod health;
mod helpers;
mod hostile;
mod invites;
mod jobs;
mod kinds;
mod leases;
mod legacy_import;
mod limits;
mod media;
mod media_generation;
mod model_server;
mod outage;
mod pages;
mod proxy;
mod prune;
mod quotas;
mod realtime;
mod reconcile;
mod restart;
mod scheduler;
mod sessions;
mod socket_access;
mod sources;
mod state;
mod storage;
mod turn_state;
mod turns;
mod usage;
