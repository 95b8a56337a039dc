//! Logs and metrics for every questboard process.
//!
//! Logs go to stderr through `tracing` (`RUST_LOG` filters, `QB_LOG_FORMAT`
//! picks text or JSON). Metrics go to one process-wide Prometheus recorder
//! and are served as text at `/metrics` on their own listener
//! (`QB_METRICS_ADDR`), away from the public API.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use questboard_core::metrics as m;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Histogram buckets for every `_seconds` metric: 1 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the log subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use. (A process
/// can hold only one recorder; tests that start several apps share it.)
pub fn metrics_handle() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            m::describe();
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            metrics::gauge!(m::PROCESS_START_TIME_SECONDS).set(started);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
}

/// Binds `addr` and serves `/metrics` there in the background. Returns the
/// bound address (useful with port 0).
pub async fn serve_metrics(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = metrics_handle().map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "metrics listener stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics");
    Ok(bound)
}
