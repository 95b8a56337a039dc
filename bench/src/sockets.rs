//! Many sockets over two API processes, and one of them restarting: 20,000
//! sockets (`--sockets`) on sessions of four players (each socket its own
//! player, a member of its session, so the sockets-per-user quota counts
//! as in production), two of each session's sockets on each of two
//! `questboard serve` processes (so every event reaches both through
//! Redis).
//!
//! 1. **Connect**: every socket opens (500 upgrades in flight at a time);
//!    the time that takes, and each API process's resident memory growth
//!    per socket it holds.
//! 2. **Fan-out**: every session is renamed once through the HTTP API (32
//!    requests in flight, alternating processes): one `session.updated`
//!    event per session, delivered to its four sockets; deliveries per
//!    second, first request to last delivery.
//! 3. **Restart**: one API process is killed (SIGKILL: a crash, its
//!    sockets see the connection drop) and every session is renamed again
//!    through the other while it is down, so the first one's sockets miss
//!    an event. Then it is started again on the same port. Its sockets
//!    reconnect as the TypeScript client does (full-jitter backoff from
//!    500 ms, doubling, capped at 30 s) with `after_seq` = the last event
//!    they saw. Reported: how long from the restart until every socket has
//!    resumed and holds its session's newest event.
//!
//! Every socket checks that each event it receives is the one after the
//! last (across reconnects): nothing missed, nothing twice. The run fails
//! otherwise, or if a socket does not end on its session's newest event.
//! The clients run in two processes of this binary (`--socket-clients`,
//! hidden), 10,000 sockets each: a process may hold only so many open
//! files (20,000 on the benchmark machine, where the limit cannot be
//! raised). Each reads its sockets from a JSON line on stdin, opens them,
//! and prints what they have seen as a JSON line every 50 ms; a later
//! line on stdin gives each socket's newest seq, after which it also
//! counts the sockets holding it.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::pipeline::make_sessions;
use super::processes::Processes;
use super::realtime::resident_kib;
use super::{BenchArgs, Figure, Scratch, runs, token};
use questboard::config::Config;

/// Sockets per session (players at the table).
const PER_SESSION: usize = 4;

/// The API processes' settings: room for every socket.
const API_ENV: [(&str, &str); 1] = [("QB_HTTP_MAX_CONNECTIONS", "30000")];

/// Client processes.
const CLIENT_PROCESSES: usize = 2;

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let sockets = if args.quick { 200 } else { args.sockets };
    let mut connect = Figure::new(
        format!("{sockets} sockets over two API processes: all connected"),
        "s",
    );
    let mut memory = Figure::new("  ... API resident memory per socket", "KiB");
    let mut fanout = Figure::new(
        "  ... one event per session to its 4 sockets: deliveries",
        "msg/s",
    );
    let mut restart = Figure::new(
        format!(
            "  ... one API killed and restarted: {} sockets resumed, nothing missed, after",
            sockets / 2
        ),
        "s",
    );
    let mut startup = Figure::new("  ... of which the restarted process's start", "s");
    for _ in 0..runs(args) {
        let o = Scratch::scoped(config, async |scratch| {
            measure(scratch, config, sockets).await
        })
        .await?;
        connect.values.push(o.connect);
        memory.values.push(o.memory);
        fanout.values.push(o.fanout);
        restart.values.push(o.restart);
        startup.values.push(o.startup);
    }
    let figures = vec![connect, memory, fanout, restart, startup];
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

struct Outcome {
    connect: f64,
    memory: f64,
    fanout: f64,
    restart: f64,
    startup: f64,
}

/// What a client process is given: its sockets.
#[derive(Serialize, Deserialize)]
struct Spec {
    addrs: [SocketAddr; 2],
    /// Each socket's session, API process (an index of `addrs`) and its
    /// player's token.
    sockets: Vec<(uuid::Uuid, usize, String)>,
}

/// A later command: each socket's newest seq.
#[derive(Serialize, Deserialize)]
struct Newest {
    newest: Vec<i64>,
}

/// What a client process reports, every 50 ms.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Status {
    /// Sockets opened at least once.
    opened: usize,
    connected: usize,
    /// Events received, all sockets.
    delivered: usize,
    /// Sockets connected and holding their newest seq (0 before it is given).
    caught_up: usize,
    /// A socket saw a gap or a repeat: what it saw.
    broken: Option<String>,
}

/// One client process, driven from its stdin and stdout (plain pipes:
/// a line now and then, read by a thread of its own).
struct ClientProcess {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    status: Arc<Mutex<Status>>,
    count: usize,
}

impl ClientProcess {
    fn start(spec: &Spec) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("--socket-clients")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a socket client process")?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = serde_json::to_vec(spec)?;
        line.push(b'\n');
        stdin.write_all(&line)?;
        stdin.flush()?;
        let status = Arc::new(Mutex::new(Status::default()));
        let shared = status.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let (Ok(s), Ok(mut status)) =
                    (serde_json::from_str::<Status>(&line), shared.lock())
                {
                    *status = s;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            status,
            count: spec.sockets.len(),
        })
    }

    fn status(&self) -> anyhow::Result<Status> {
        let status = self
            .status
            .lock()
            .map_err(|_| anyhow::anyhow!("status lock poisoned"))?
            .clone();
        if let Some(what) = &status.broken {
            anyhow::bail!("{what}");
        }
        Ok(status)
    }

    fn send_newest(&mut self, newest: Vec<i64>) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&Newest { newest })?;
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        Ok(self.stdin.flush()?)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds for the statuses of every client process.
async fn until(
    clients: &[ClientProcess],
    limit: Duration,
    what: &str,
    done: impl Fn(&ClientProcess, &Status) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for c in clients {
            all &= done(c, &c.status()?);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            let statuses: Vec<Status> = clients.iter().filter_map(|c| c.status().ok()).collect();
            anyhow::bail!("{what} did not happen within {limit:?}: {statuses:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn measure(scratch: &Scratch, config: &Config, sockets: usize) -> anyhow::Result<Outcome> {
    let sessions = make_sessions(&scratch.pool, sockets.div_ceil(PER_SESSION)).await?;
    let (a, addr_a) = Processes::api_with(scratch, config, &API_ENV).await?;
    let (b, addr_b) = Processes::api_with(scratch, config, &API_ENV).await?;
    let mut apis = [Some(a), Some(b)];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = |apis: &[Option<Processes>; 2]| -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for api in apis.iter().flatten() {
            sum += resident_kib(api.pid())?;
        }
        Ok(sum)
    };
    let before = rss(&apis)?;
    let token = token(config, "bench")?;
    // Socket i: player i, of session i / 4; two of each session's sockets
    // on each API process.
    sqlx::query(
        "INSERT INTO campaign_session_members (session_id, user_id, role)
         SELECT ($1::uuid[])[i / $2 + 1], 'player' || i, 'player'
         FROM generate_series(0, $3 - 1) AS i",
    )
    .bind(&sessions)
    .bind(PER_SESSION as i32)
    .bind(sockets as i32)
    .execute(&scratch.pool)
    .await?;
    let all = (0..sockets)
        .map(|i| {
            Ok((
                sessions[i / PER_SESSION],
                i % 2,
                super::token(config, &format!("player{i}"))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let per = sockets.div_ceil(CLIENT_PROCESSES);

    // 1. Connect.
    let started = Instant::now();
    let mut clients = Vec::new();
    for part in all.chunks(per) {
        clients.push(ClientProcess::start(&Spec {
            addrs: [addr_a, addr_b],
            sockets: part.to_vec(),
        })?);
    }
    until(&clients, Duration::from_secs(300), "connecting", |c, s| {
        s.opened == c.count
    })
    .await?;
    let connect = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let memory = (rss(&apis)? - before) / sockets as f64;

    // 2. Fan-out: every session renamed once.
    let http = reqwest::Client::new();
    let delivered: Vec<usize> = clients
        .iter()
        .map(|c| c.status().map(|s| s.delivered))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    rename_all(&http, &token, &[addr_a, addr_b], &sessions, "first").await?;
    let expected: Vec<usize> = clients
        .iter()
        .zip(&delivered)
        .map(|(c, d)| d + c.count)
        .collect();
    until(&clients, Duration::from_secs(120), "delivering", |c, s| {
        let i = clients
            .iter()
            .position(|x| std::ptr::eq(x, c))
            .unwrap_or_default();
        s.delivered >= expected[i]
    })
    .await?;
    let fanout = sockets as f64 / started.elapsed().as_secs_f64();

    // 3. Kill the first API process; rename through the second meanwhile.
    let port = addr_a.port();
    if let Some(a) = apis[0].take() {
        a.stop();
    }
    rename_all(&http, &token, &[addr_b], &sessions, "second").await?;
    let newest: Vec<i64> = sqlx::query_scalar(
        "SELECT c.next_event_seq - 1 FROM unnest($1::uuid[]) WITH ORDINALITY AS s(id, n)
         JOIN campaign_sessions c ON c.id = s.id ORDER BY s.n",
    )
    .bind(&sessions)
    .fetch_all(&scratch.pool)
    .await?;
    anyhow::ensure!(newest.len() == sessions.len(), "sessions missing");
    for (client, part) in clients.iter_mut().zip(all.chunks(per)) {
        let of_sockets = part
            .iter()
            .map(|(session, ..)| {
                sessions
                    .iter()
                    .position(|s| s == session)
                    .map_or(0, |i| newest[i])
            })
            .collect();
        client.send_newest(of_sockets)?;
    }
    let restarted = Instant::now();
    apis[0] = Some(Processes::api_on(scratch, config, port, &API_ENV).await?);
    let startup = restarted.elapsed().as_secs_f64();
    until(&clients, Duration::from_secs(300), "resuming", |c, s| {
        s.caught_up == c.count
    })
    .await?;
    let restart = restarted.elapsed().as_secs_f64();
    drop(clients);
    drop(apis);
    Ok(Outcome {
        connect,
        memory,
        fanout,
        restart,
        startup,
    })
}

/// Renames every session once, through the API processes `via` in turn,
/// 32 requests in flight.
async fn rename_all(
    http: &reqwest::Client,
    token: &str,
    via: &[SocketAddr],
    sessions: &[uuid::Uuid],
    name: &str,
) -> anyhow::Result<()> {
    let requests = sessions.iter().enumerate().map(|(n, id)| {
        let addr = via[n % via.len()];
        async move {
            let response = http
                .patch(format!("http://{addr}/api/sessions/{id}"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "name": format!("{name} {n}") }))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "rename failed: {}",
                response.status()
            );
            anyhow::Ok(())
        }
    });
    let mut stream = futures::stream::iter(requests).buffer_unordered(32);
    while let Some(result) = stream.next().await {
        result?;
    }
    Ok(())
}

/// What one client socket has seen.
struct Seen {
    session: uuid::Uuid,
    api: usize,
    token: String,
    /// The last event's seq.
    last: AtomicI64,
    opened: AtomicBool,
    connected: AtomicBool,
}

/// What a client process's sockets share.
struct Clients {
    addrs: [SocketAddr; 2],
    seen: Vec<Seen>,
    delivered: AtomicUsize,
    broken: Mutex<Option<String>>,
}

/// The `--socket-clients` process: opens the sockets of the spec read from
/// stdin (250 upgrades in flight), keeps them open, reports every 50 ms.
pub async fn serve_clients() -> anyhow::Result<()> {
    // Stdin's buffer is shared: what follows the first line stays for the
    // thread below.
    let first = std::io::stdin()
        .lock()
        .lines()
        .next()
        .context("no spec")??;
    let spec: Spec = serde_json::from_str(&first)?;
    let clients = Arc::new(Clients {
        addrs: spec.addrs,
        seen: spec
            .sockets
            .into_iter()
            .map(|(session, api, token)| Seen {
                session,
                api,
                token,
                last: AtomicI64::new(0),
                opened: AtomicBool::new(false),
                connected: AtomicBool::new(false),
            })
            .collect(),
        delivered: AtomicUsize::new(0),
        broken: Mutex::new(None),
    });
    let newest: Arc<Mutex<Option<Vec<i64>>>> = Arc::default();
    {
        let newest = newest.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let (Ok(n), Ok(mut newest)) =
                    (serde_json::from_str::<Newest>(&line), newest.lock())
                {
                    *newest = Some(n.newest);
                }
            }
        });
    }
    {
        let clients = clients.clone();
        tokio::spawn(async move {
            let all: Vec<usize> = (0..clients.seen.len()).collect();
            for chunk in all.chunks(250) {
                let opened = futures::future::join_all(chunk.iter().map(|&i| open(&clients, i)));
                for (&i, socket) in chunk.iter().zip(opened.await) {
                    match socket {
                        Ok(socket) => {
                            tokio::spawn(client(clients.clone(), i, Some(socket)));
                        }
                        Err(_) => {
                            tokio::spawn(client(clients.clone(), i, None));
                        }
                    }
                }
            }
        });
    }
    loop {
        let newest = newest.lock().map(|n| n.clone()).ok().flatten();
        let status = Status {
            opened: count(&clients, |s| s.opened.load(Ordering::Relaxed)),
            connected: count(&clients, |s| s.connected.load(Ordering::Relaxed)),
            delivered: clients.delivered.load(Ordering::Relaxed),
            caught_up: newest.map_or(0, |newest| {
                clients
                    .seen
                    .iter()
                    .zip(&newest)
                    .filter(|(s, n)| {
                        s.connected.load(Ordering::Relaxed) && s.last.load(Ordering::Relaxed) == **n
                    })
                    .count()
            }),
            broken: clients.broken.lock().ok().and_then(|b| b.clone()),
        };
        let mut line = serde_json::to_vec(&status)?;
        line.push(b'\n');
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(&line).is_err() || stdout.flush().is_err() {
            // The benchmark is gone.
            return Ok(());
        }
        drop(stdout);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(clients: &Clients, f: impl Fn(&Seen) -> bool) -> usize {
    clients.seen.iter().filter(|s| f(s)).count()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens socket `i` after the last event it saw.
async fn open(clients: &Clients, i: usize) -> anyhow::Result<Socket> {
    let seen = &clients.seen[i];
    let mut request = format!(
        "ws://{}/ws/sessions/{}?after_seq={}",
        clients.addrs[seen.api],
        seen.session,
        seen.last.load(Ordering::Relaxed)
    )
    .into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", seen.token).parse()?);
    let socket = tokio_tungstenite::connect_async(request).await?.0;
    seen.opened.store(true, Ordering::Relaxed);
    seen.connected.store(true, Ordering::Relaxed);
    Ok(socket)
}

/// Reads socket `i` for ever, reconnecting after the last event it saw
/// whenever it drops, as the TypeScript client does: full-jitter backoff
/// from 500 ms, doubling up to 30 s, back to the start once a message
/// arrives (not on open: a server that accepts and drops at once is not
/// hammered).
async fn client(clients: Arc<Clients>, i: usize, mut socket: Option<Socket>) {
    let seen = &clients.seen[i];
    let mut failures = 0u32;
    loop {
        if let Some(mut open) = socket.take() {
            while let Some(Ok(message)) = open.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                failures = 0;
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let Some(seq) = event["seq"].as_i64() else {
                    continue;
                };
                let last = seen.last.load(Ordering::Relaxed);
                if seq != last + 1
                    && let Ok(mut broken) = clients.broken.lock()
                {
                    broken.get_or_insert(format!("socket {i}: event {seq} after {last}"));
                }
                seen.last.store(seq, Ordering::Relaxed);
                clients.delivered.fetch_add(1, Ordering::Relaxed);
            }
            seen.connected.store(false, Ordering::Relaxed);
        }
        let cap = (500u64 << failures.min(6)).min(30_000);
        failures += 1;
        let wait = (uuid::Uuid::new_v4().as_u128() % u128::from(cap)) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        socket = open(&clients, i).await.ok();
    }
}
