//! A socket resuming after many missed events: one session holds 100,000
//! events (the largest of `--resume-events`, written in bulk: a turn's
//! `turn.queued`, `turn.started` and `turn.completed` in turn, with a
//! reply of 200 characters); a client connects to one API process with
//! `after_seq` that many events back and reads until the newest. Reported
//! per count: the time from the upgrade request to the last event, events
//! per second, and the growth of the API process's resident memory while it
//! replays (sampled every 10 ms). Every event must arrive once, in order;
//! the run fails otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::pipeline::make_sessions;
use super::processes::Processes;
use super::realtime::resident_kib;
use super::{BenchArgs, Figure, Scratch, runs, token};
use questboard::config::Config;

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let counts: Vec<usize> = if args.quick {
        vec![100, 2_000]
    } else {
        args.resume_events.clone()
    };
    let held = counts.iter().copied().max().unwrap_or(0);
    let mut rows: Vec<[Figure; 3]> = counts
        .iter()
        .map(|n| {
            [
                Figure::new(
                    format!("socket resuming after {n} missed events: connect -> last event"),
                    "ms",
                ),
                Figure::new(
                    format!("  ... events replayed per second ({n})"),
                    "events/s",
                ),
                Figure::new(
                    format!("  ... API resident memory growth while replaying ({n})"),
                    "KiB",
                ),
            ]
        })
        .collect();
    Scratch::scoped(config, async |scratch| {
        let session = make_sessions(&scratch.pool, 1).await?[0];
        load(scratch, session, held).await?;
        super::analyze(&scratch.pool).await?;
        let (api, addr) = Processes::api(scratch, config).await?;
        let token = token(config, "bench")?;
        for _ in 0..runs(args) {
            for (row, &n) in rows.iter_mut().zip(&counts) {
                let (ms, grew) = replay(api.pid(), addr, session, &token, held, n).await?;
                row[0].values.push(ms);
                row[1].values.push(n as f64 / (ms / 1000.0));
                row[2].values.push(grew);
            }
        }
        api.stop();
        Ok(())
    })
    .await?;
    let figures: Vec<Figure> = rows.into_iter().flatten().collect();
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

/// Writes `count` events of one session, as its turns would have.
async fn load(scratch: &Scratch, session: uuid::Uuid, count: usize) -> anyhow::Result<()> {
    let mut tx = scratch.pool.begin().await?;
    // Published long ago: not the outbox's business.
    sqlx::query("ALTER TABLE session_events DISABLE TRIGGER session_events_outbox")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO session_events (session_id, seq, type, at, data)
         SELECT $1, g, (ARRAY['turn.queued', 'turn.started', 'turn.completed'])[g % 3 + 1],
                now() - interval '1 day' + g * interval '10 milliseconds',
                CASE g % 3
                    WHEN 0 THEN jsonb_build_object('seq', g / 3 + 1, 'author', 'bench',
                                                   'input', 'I search the room.')
                    WHEN 1 THEN jsonb_build_object('seq', g / 3 + 1, 'attempt', 1)
                    ELSE jsonb_build_object('seq', g / 3 + 1, 'output', repeat('You see a door. ', 12)
                                            || 'What now?')
                END
         FROM generate_series(1, $2::bigint) AS g",
    )
    .bind(session)
    .bind(count as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("ALTER TABLE session_events ENABLE TRIGGER session_events_outbox")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE campaign_sessions SET next_event_seq = $2 + 1 WHERE id = $1")
        .bind(session)
        .bind(count as i64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Connects with `after_seq = held - missed` and reads to event `held`.
/// Returns the milliseconds that took and the API's memory growth (KiB).
async fn replay(
    api: u32,
    addr: std::net::SocketAddr,
    session: uuid::Uuid,
    token: &str,
    held: usize,
    missed: usize,
) -> anyhow::Result<(f64, f64)> {
    let before = resident_kib(api)?;
    let done = Arc::new(AtomicBool::new(false));
    let peak = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = before;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(resident_kib(api).unwrap_or(peak));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let after = held - missed;
    let started = Instant::now();
    let mut request =
        format!("ws://{addr}/ws/sessions/{session}?after_seq={after}").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let mut last = after as i64;
    while last < held as i64 {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .context("no event for 60 s")?
            .context("the socket closed")??;
        let Message::Text(text) = message else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(&text)?;
        let seq = event["seq"].as_i64().context("a message without seq")?;
        anyhow::ensure!(seq == last + 1, "event {seq} arrived after {last}");
        last = seq;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    done.store(true, Ordering::Relaxed);
    let peak = peak.await?;
    drop(socket);
    // Let the API drop the socket before the next replay measures.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((ms, peak - before))
}
