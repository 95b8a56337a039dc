//! Accepting HTTP connections, with the limits a public server needs.
//!
//! `axum::serve` has no timeouts and no connection cap: a client that sends
//! half a request line, or nothing, or idles on keep-alive, holds its
//! connection (and memory) forever. So connections are served here with
//! hyper directly:
//! - at most [`Limits::max_connections`] at once: past it, a new connection
//!   is closed at accept (counted in `questboard_http_connections_refused_total`);
//! - a request head must arrive within [`Limits::header_timeout`] of the
//!   connection (or its previous response) being ready for one, so an
//!   idle keep-alive connection is closed after that long too;
//! - a request body must arrive within [`Limits::body_timeout`] (408, see
//!   `extract`); a declared `Content-Length` over the body limit is
//!   answered 413 before any of it is read (the router's middleware).
//!
//! Upgraded WebSockets leave hyper's connection and these limits; their own
//! ping/pong and send timeouts apply (see `ws`). Shutdown: stop accepting,
//! ask every connection to finish its request in flight and close, and
//! wait until they have.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use questboard_core::metrics as m;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once (`QB_HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Longest wait for a request head (`QB_HTTP_HEADER_TIMEOUT_MS`).
    pub header_timeout: Duration,
    /// Longest wait for a request body (`QB_HTTP_BODY_TIMEOUT_MS`).
    pub body_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or the like: wait a moment.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::HTTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                // (`changed`, not `wait_for`: its guard is not `Send`.)
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it is done.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}
