//! Logs and metrics for every questboard process.
//!
//! Logs go to stderr through `tracing` (`RUST_LOG` filters, `QB_LOG_FORMAT`
//! picks text or JSON). Every line passes through [`SafeLines`], which
//! escapes control, format and bidirectional characters, so nothing a client
//! or a remote server sends (an error body, a name) can forge a log line or
//! reorder what a terminal shows. Metrics go to one process-wide Prometheus recorder
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

/// Buckets for the durations that can run to hours (a job's wait and run,
/// a lease held): the same up to a minute, then on to 12 hours, so a
/// three-minute wait is not read as one minute.
pub const LONG_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
];

/// Most characters of one piece of client input a log line carries.
pub const MAX_LOGGED_INPUT_CHARS: usize = 200;

/// `input` cut to [`MAX_LOGGED_INPUT_CHARS`] for a log line, saying how
/// much was left out: a client cannot make one request write kilobytes of
/// log (escaping is [`SafeLines`]'s job).
pub fn clipped(input: &str) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(MAX_LOGGED_INPUT_CHARS) {
        None => std::borrow::Cow::Borrowed(input),
        Some((cut, _)) => {
            let left = input[cut..].chars().count();
            std::borrow::Cow::Owned(format!("{}… ({left} more characters)", &input[..cut]))
        }
    }
}

/// Installs the log subscriber. Safe to call more than once (later calls do nothing).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        // Plain text: colour codes would be escaped like any other
        // control character.
        LogFormat::Text => builder
            .with_ansi(false)
            .with_writer(SafeLines::new(std::io::stderr, Escape::Text))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_writer(SafeLines::new(std::io::stderr, Escape::Json))
            .try_init(),
    };
}

/// How [`SafeLines`] writes a character it escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `\u{202e}`, as Rust's debug format does.
    Text,
    /// `\u202e`, valid inside a JSON string (the JSON formatter already
    /// escapes control characters; this adds format and bidi characters).
    Json,
}

/// A log writer that escapes, in each formatted event, every control
/// character except the final newline and every Unicode format character
/// (zero-width, bidirectional embeddings, overrides and isolates).
///
/// `tracing-subscriber` formats an event into one buffer and writes it with
/// one `write_all`, so each write is one whole line.
#[derive(Debug, Clone, Copy)]
pub struct SafeLines<M> {
    inner: M,
    escape: Escape,
}

impl<M> SafeLines<M> {
    /// Wraps the writer factory `inner`.
    pub fn new(inner: M, escape: Escape) -> Self {
        Self { inner, escape }
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for SafeLines<M>
{
    type Writer = SafeWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        SafeWriter {
            inner: self.inner.make_writer(),
            escape: self.escape,
        }
    }
}

/// The writer [`SafeLines`] hands out.
#[derive(Debug)]
pub struct SafeWriter<W> {
    inner: W,
    escape: Escape,
}

impl<W: std::io::Write> std::io::Write for SafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner
            .write_all(escape_line(buf, self.escape).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `line` with control characters (but a trailing newline) and format
/// characters escaped. Bytes that are not UTF-8 are shown as `\x..`.
pub fn escape_line(line: &[u8], escape: Escape) -> String {
    let (body, newline) = match line.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (line, false),
    };
    let mut out = String::with_capacity(line.len() + 16);
    for chunk in body.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || questboard_core::identity::is_format(c) {
                match escape {
                    Escape::Text => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                    Escape::Json => out.push_str(&format!("\\u{:04x}", c as u32)),
                }
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    if newline {
        out.push('\n');
    }
    out
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
                .set_buckets_for_metric(
                    Matcher::Full(m::JOB_QUEUE_WAIT_SECONDS.into()),
                    LONG_SECONDS_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .set_buckets_for_metric(
                    Matcher::Full(m::JOB_RUN_SECONDS.into()),
                    LONG_SECONDS_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .set_buckets_for_metric(
                    Matcher::Full(m::LEASE_HOLD_SECONDS.into()),
                    LONG_SECONDS_BUCKETS,
                )
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer factory collecting what is written.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_through(escape: Escape) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let builder = tracing_subscriber::fmt().with_ansi(false);
        let hostile = "alice\nINFO forged line\r\u{202e}lave\u{200b}\u{1b}[31m";
        match escape {
            Escape::Text => {
                let subscriber = builder
                    .with_writer(SafeLines::new(move || sink.clone(), escape))
                    .finish();
                tracing::subscriber::with_default(subscriber, || {
                    tracing::info!(user = %hostile, error = %hostile, "{hostile}");
                });
            }
            Escape::Json => {
                let subscriber = builder
                    .json()
                    .with_writer(SafeLines::new(move || sink.clone(), escape))
                    .finish();
                tracing::subscriber::with_default(subscriber, || {
                    tracing::info!(user = %hostile, "{hostile}");
                });
            }
        }
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn logged_input_is_cut() {
        assert_eq!(clipped("short"), "short");
        let long = "é".repeat(6_171);
        let cut = clipped(&long);
        assert!(cut.starts_with(&"é".repeat(MAX_LOGGED_INPUT_CHARS)));
        assert!(cut.ends_with("… (5971 more characters)"), "{cut}");
    }

    #[test]
    fn text_lines_escape_newlines_controls_and_bidi_characters() {
        let out = log_through(Escape::Text);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.ends_with('\n'));
        for raw in ['\r', '\u{202e}', '\u{200b}', '\u{1b}'] {
            assert!(!out.contains(raw), "{raw:?} raw in {out}");
        }
        assert!(
            out.contains(r"alice\u{a}INFO forged line\u{d}\u{202e}lave\u{200b}"),
            "{out}"
        );
    }

    #[test]
    fn json_lines_stay_json_with_bidi_characters_escaped() {
        let out = log_through(Escape::Json);
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(
            !out.contains('\u{202e}') && !out.contains('\u{200b}'),
            "{out}"
        );
        let line: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(
            line["fields"]["user"],
            "alice\nINFO forged line\r\u{202e}lave\u{200b}\u{1b}[31m"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_in_hex() {
        assert_eq!(escape_line(b"a\xffb\n", Escape::Text), "a\\xffb\n");
        assert_eq!(escape_line(b"plain", Escape::Text), "plain");
    }
}
