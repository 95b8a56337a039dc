//! Media through one API process: a 20 MB map uploaded (MB/s, the body
//! streamed to storage as it arrives), a 1 MB image fetched one request
//! after another (latency percentiles), and how much the API process's
//! resident memory grows while it receives a 25 MB upload (sampled every
//! 5 ms). On the local filesystem and, when an S3-compatible server is
//! given (`QB_TEST_S3_ENDPOINT`, as `scripts/services s3` starts moto), on
//! S3.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::processes::Processes;
use super::realtime::resident_kib;
use super::{BenchArgs, Figure, Scratch, percentile, runs, token};
use questboard::config::Config;

/// A PNG signature and header padded to `len` bytes (what the upload
/// check reads is the start).
fn png(len: usize) -> Vec<u8> {
    let mut bytes =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89".to_vec();
    bytes.resize(len, 0x5a);
    bytes
}

/// Runs the scenarios and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (upload_bytes, big_bytes, gets) = if args.quick {
        (2_000_000, 3_000_000, 20)
    } else {
        (20_000_000, 25_000_000, 500)
    };
    let dir = std::env::temp_dir().join(format!("qb-bench-media-{}", std::process::id()));
    let backends = backends("media", &dir).await?;
    let upload_body = bytes::Bytes::from(png(upload_bytes));
    let big_body = bytes::Bytes::from(png(big_bytes));
    let image = bytes::Bytes::from(png(1_000_000));
    let mut figures = Vec::new();
    for (name, env) in &backends {
        let mut rate = Figure::new(
            format!(
                "media upload of a {} MB map, {name}",
                upload_bytes / 1_000_000
            ),
            "MB/s",
        );
        let mut p50 = Figure::new(format!("  ... GET of a 1 MB image, {name}, p50"), "ms");
        let mut p99 = Figure::new("  ... p99", "ms");
        let mut rss = Figure::new(
            format!(
                "  ... API resident memory growth while receiving {} MB",
                big_bytes / 1_000_000
            ),
            "MB",
        );
        for _ in 0..runs(args) {
            Scratch::scoped(config, async |scratch| {
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let (api, addr) = Processes::api_with(scratch, config, &env).await?;
                let client = reqwest::Client::new();
                let bearer = token(config, "bench")?;
                let session: Value = client
                    .post(format!("http://{addr}/api/sessions"))
                    .bearer_auth(&bearer)
                    .json(&json!({ "name": "Media bench" }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let session = session["session_id"].as_str().context("session id")?.to_owned();
                let upload = |body: bytes::Bytes| {
                    let (client, bearer, session) = (client.clone(), bearer.clone(), session.clone());
                    async move {
                        let resp: Value = client
                            .post(format!("http://{addr}/api/sessions/{session}/assets?kind=map&name=bench.png"))
                            .bearer_auth(&bearer)
                            .header("content-type", "image/png")
                            .body(body)
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await?;
                        anyhow::Ok(resp["url"].as_str().context("url")?.to_owned())
                    }
                };
                // Warm up (connections, the session's first object).
                upload(image.clone()).await?;
                let started = Instant::now();
                upload(upload_body.clone()).await?;
                rate.values.push(upload_bytes as f64 / 1e6 / started.elapsed().as_secs_f64());

                let url = upload(image.clone()).await?;
                let mut took = Vec::with_capacity(gets);
                for _ in 0..gets {
                    let asked = Instant::now();
                    let bytes = client
                        .get(format!("http://{addr}{url}"))
                        .bearer_auth(&bearer)
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    anyhow::ensure!(bytes.len() == 1_000_000, "short read");
                    took.push(asked.elapsed().as_secs_f64() * 1e3);
                }
                took.sort_by(f64::total_cmp);
                p50.values.push(percentile(&took, 0.5));
                p99.values.push(percentile(&took, 0.99));

                let pid = api.pid();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let before = resident_kib(pid)?;
                let done = Arc::new(AtomicBool::new(false));
                let sampler = {
                    let done = done.clone();
                    tokio::spawn(async move {
                        let mut peak = 0.0f64;
                        while !done.load(Ordering::Relaxed) {
                            peak = peak.max(resident_kib(pid).unwrap_or(0.0));
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        peak
                    })
                };
                upload(big_body.clone()).await?;
                done.store(true, Ordering::Relaxed);
                let peak = sampler.await?;
                rss.values.push(((peak - before) / 1024.0).max(0.0));
                api.stop();
                Ok(())
            })
            .await?;
        }
        for figure in [rate, p50, p99, rss] {
            figure.print();
            figures.push(figure);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(figures)
}

/// The storages measured: a local directory `dir`, and S3 when
/// `QB_TEST_S3_ENDPOINT` names a server (a fresh bucket), each as the
/// environment of a questboard process.
pub async fn backends(
    group: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, Vec<(String, String)>)>> {
    let mut backends: Vec<(String, Vec<(String, String)>)> = Vec::new();
    backends.push((
        "local filesystem".into(),
        vec![("QB_STORAGE_URL".into(), dir.to_string_lossy().into_owned())],
    ));
    if let Ok(endpoint) = std::env::var("QB_TEST_S3_ENDPOINT") {
        let bucket = format!("qb-bench-{group}-{}", std::process::id());
        reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .context("creating the bench bucket")?
            .error_for_status()?;
        backends.push((
            "S3 (moto)".into(),
            vec![
                ("QB_STORAGE_URL".into(), format!("s3://{bucket}/bench")),
                ("AWS_ENDPOINT".into(), endpoint),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_ACCESS_KEY_ID".into(), "test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into()),
            ],
        ));
    } else {
        eprintln!("{group}: QB_TEST_S3_ENDPOINT unset, S3 not measured");
    }
    Ok(backends)
}
