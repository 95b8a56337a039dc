//! Game-state updates through one API process: how many a hot session
//! takes (one game master sending one after another, and several racing on
//! the version, each retrying with the `current_version` of its 409), how
//! many 100 sessions take together (one client per group of sessions, no
//! conflicts), and the latency from a game master's POST to the
//! `state.updated` event on a player's socket, at half the 100-session
//! maximum (open loop: each session's updates are due on a fixed schedule).
//! Every update is two operations (an `inc` and a `set`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::pipeline::make_sessions;
use super::processes::Processes;
use super::realtime::connect;
use super::{BenchArgs, CpuMeter, Figure, Scratch, percentile, runs, token, wait_for};
use questboard::config::Config;

/// Sessions of the spread and latency scenarios.
const SESSIONS: usize = 100;
/// Game masters racing on the hot session.
const RACERS: usize = 8;

/// Runs the scenarios and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (hot_total, spread_total, seconds) = if args.quick {
        (100, 200, 1.0)
    } else {
        (5_000, 20_000, 10.0)
    };
    let mut serial = Figure::new(
        "state updates, 1 session, 1 game master one after another",
        "updates/s",
    );
    let mut racing = Figure::new(
        format!("state updates, 1 session, {RACERS} game masters racing (409s retried)"),
        "updates/s",
    );
    let mut conflicts = Figure::new("  ... of the POSTs answered 409", "%");
    let mut spread = Figure::new(
        format!(
            "state updates, {SESSIONS} sessions, {} clients: maximum",
            args.clients
        ),
        "updates/s",
    );
    let mut cpu = [
        Figure::new("  ... CPU per 1,000 updates: API process", "ms"),
        Figure::new("  ... CPU per 1,000 updates: Postgres", "ms"),
    ];
    let mut offered = Figure::new("open loop at half of it: offered", "updates/s");
    let mut p50 = Figure::new("  ... POST -> state.updated on a player's socket p50", "ms");
    let mut p95 = Figure::new("  ... p95", "ms");
    let mut p99 = Figure::new("  ... p99", "ms");
    for _ in 0..runs(args) {
        Scratch::scoped(config, async |scratch| {
            let (api, addr) = Processes::api(scratch, config).await?;
            let token = token(config, "bench")?;
            let client = reqwest::Client::new();
            let hot = make_sessions(&scratch.pool, 1).await?[0];
            let gm = Gm::new(client.clone(), addr, token.clone());

            let started = Instant::now();
            let mut version = 0;
            for i in 0..hot_total / 2 {
                version = gm
                    .update(hot, version, i)
                    .await?
                    .context("serial conflict")?;
            }
            serial
                .values
                .push((hot_total / 2) as f64 / started.elapsed().as_secs_f64());

            let (rate, share) = race(&gm, hot, version, hot_total).await?;
            racing.values.push(rate);
            conflicts.values.push(share * 100.0);

            let sessions = Arc::new(make_sessions(&scratch.pool, SESSIONS).await?);
            let meter = CpuMeter::start(&api.pids());
            let max = spread_run(&gm, &sessions, args.clients.max(1), spread_total).await?;
            let used = meter.stop();
            spread.values.push(max);
            let per = 1_000_000.0 / spread_total as f64;
            cpu[0].values.push(used.questboard * per);
            cpu[1].values.push(used.postgres * per);

            let rate = args.rate.unwrap_or(max / 2.0).max(1.0);
            let latencies = open_loop(&gm, &sessions, rate, seconds).await?;
            offered.values.push(rate);
            p50.values.push(percentile(&latencies, 0.5));
            p95.values.push(percentile(&latencies, 0.95));
            p99.values.push(percentile(&latencies, 0.99));
            api.stop();
            Ok(())
        })
        .await?;
    }
    let mut figures = vec![serial, racing, conflicts, spread];
    figures.extend(cpu);
    figures.extend([offered, p50, p95, p99]);
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

/// A game master's HTTP client.
#[derive(Clone)]
struct Gm {
    client: reqwest::Client,
    addr: SocketAddr,
    token: String,
}

impl Gm {
    fn new(client: reqwest::Client, addr: SocketAddr, token: String) -> Self {
        Gm {
            client,
            addr,
            token,
        }
    }

    /// POSTs update number `i` against `version`: `Ok(Some(new_version))`,
    /// or `Ok(None)` on a version conflict.
    async fn update(
        &self,
        session: uuid::Uuid,
        version: i64,
        i: usize,
    ) -> anyhow::Result<Option<i64>> {
        Ok(match self.send(session, version, i).await? {
            Answer::Applied { new_version, .. } => Some(new_version),
            Answer::Conflict(_) => None,
        })
    }

    async fn send(&self, session: uuid::Uuid, version: i64, i: usize) -> anyhow::Result<Answer> {
        let response = self
            .client
            .post(format!(
                "http://{}/api/sessions/{session}/state/updates",
                self.addr
            ))
            .bearer_auth(&self.token)
            .json(&json!({
                "version": version,
                "operations": [
                    {"path": "pluginData.bench.counter", "operation": "inc", "value": 1},
                    {"path": "pluginData.bench.last", "operation": "set", "value": i},
                ],
            }))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        match status {
            200 => Ok(Answer::Applied {
                new_version: body["new_version"].as_i64().context("new_version")?,
                update_id: body["update_id"].as_str().context("update_id")?.to_owned(),
            }),
            409 => Ok(Answer::Conflict(
                body["error"]["current_version"]
                    .as_i64()
                    .context("current_version")?,
            )),
            other => anyhow::bail!("state update answered {other}: {body}"),
        }
    }
}

enum Answer {
    Applied { new_version: i64, update_id: String },
    Conflict(i64),
}

/// `RACERS` game masters on one session until `total` updates applied:
/// the rate of applied updates and the share of POSTs that got 409.
async fn race(gm: &Gm, session: uuid::Uuid, from: i64, total: usize) -> anyhow::Result<(f64, f64)> {
    let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..RACERS {
        let (gm, applied) = (gm.clone(), applied.clone());
        tasks.push(tokio::spawn(async move {
            let (mut version, mut posts, mut refused) = (from, 0usize, 0usize);
            while applied.load(std::sync::atomic::Ordering::Relaxed) < total {
                posts += 1;
                match gm.send(session, version, posts).await? {
                    Answer::Applied { new_version, .. } => {
                        version = new_version;
                        applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Answer::Conflict(current) => {
                        version = current;
                        refused += 1;
                    }
                }
            }
            anyhow::Ok((posts, refused))
        }));
    }
    let (mut posts, mut refused) = (0, 0);
    for task in tasks {
        let (p, r) = task.await??;
        posts += p;
        refused += r;
    }
    let done = applied.load(std::sync::atomic::Ordering::Relaxed);
    Ok((
        done as f64 / started.elapsed().as_secs_f64(),
        refused as f64 / posts.max(1) as f64,
    ))
}

/// `clients` clients, each serving its own sessions one update at a time,
/// until `total` updates: the rate.
async fn spread_run(
    gm: &Gm,
    sessions: &Arc<Vec<uuid::Uuid>>,
    clients: usize,
    total: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (gm, sessions) = (gm.clone(), sessions.clone());
        let mine: Vec<uuid::Uuid> = sessions.iter().copied().skip(c).step_by(clients).collect();
        if mine.is_empty() {
            continue;
        }
        let count = total / clients + usize::from(c < total % clients);
        tasks.push(tokio::spawn(async move {
            let mut versions: HashMap<uuid::Uuid, i64> = HashMap::new();
            for i in 0..count {
                let session = mine[i % mine.len()];
                let version = versions.entry(session).or_insert(0);
                *version = gm.update(session, *version, i).await?.context("conflict")?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Updates at `rate` over `seconds`, each session's on its own schedule,
/// with a player's socket on every session: POST -> event latencies (ms),
/// sorted.
async fn open_loop(
    gm: &Gm,
    sessions: &Arc<Vec<uuid::Uuid>>,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Vec<f64>> {
    type Times = Arc<Mutex<HashMap<String, Instant>>>;
    let seen: Times = Arc::default();
    let mut readers = Vec::new();
    for session in sessions.iter() {
        let mut socket = connect(gm.addr, *session, &gm.token).await?;
        let seen = seen.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                    && text.contains("\"state.updated\"")
                    && let Ok(value) = serde_json::from_str::<Value>(&text)
                    && let Some(id) = value["data"]["update_id"].as_str()
                {
                    seen.lock().await.insert(id.to_owned(), Instant::now());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let versions: HashMap<uuid::Uuid, i64> = current_versions(gm, sessions).await?;
    let total = (rate * seconds).max(1.0) as usize;
    let sent: Times = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (s, session) in sessions.iter().copied().enumerate() {
        let (gm, sent) = (gm.clone(), sent.clone());
        let mut version = versions.get(&session).copied().unwrap_or(0);
        let n = sessions.len();
        tasks.push(tokio::spawn(async move {
            for i in (s..total).step_by(n) {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let at = Instant::now();
                match gm.send(session, version, i).await? {
                    Answer::Applied {
                        new_version,
                        update_id,
                    } => {
                        version = new_version;
                        sent.lock().await.insert(update_id, at);
                    }
                    Answer::Conflict(_) => anyhow::bail!("a session's own schedule conflicted"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    wait_for(Duration::from_secs(60), Duration::from_millis(10), || {
        let (sent, seen) = (sent.clone(), seen.clone());
        async move {
            let sent = sent.lock().await;
            let seen = seen.lock().await;
            Ok(sent.keys().all(|id| seen.contains_key(id)))
        }
    })
    .await
    .context("not every state.updated reached its socket")?;
    for reader in readers {
        reader.abort();
    }
    let sent = sent.lock().await;
    let seen = seen.lock().await;
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// The current version of each session, read through the API.
async fn current_versions(
    gm: &Gm,
    sessions: &[uuid::Uuid],
) -> anyhow::Result<HashMap<uuid::Uuid, i64>> {
    let mut versions = HashMap::new();
    for session in sessions {
        let body: Value = gm
            .client
            .get(format!("http://{}/api/sessions/{session}/state", gm.addr))
            .bearer_auth(&gm.token)
            .send()
            .await?
            .json()
            .await?;
        versions.insert(*session, body["version"].as_i64().context("version")?);
    }
    Ok(versions)
}
