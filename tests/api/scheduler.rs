//! The cron scheduler as operators run it: `questboard schedule`
//! processes (the real binary) against one database. Every tick is
//! enqueued once however many run; a killed leader is replaced within its
//! lease's TTL; a scheduler that was down catches up once (`once`) or not
//! at all (`skip`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use crate::helpers::{TestApp, free_port, redis_url};

/// Entries firing every second, the built-ins disabled.
fn schedule_file(entries: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = String::new();
    for name in ["prune", "prune-hourly", "reconcile"] {
        text.push_str(&format!(
            "[[entry]]\nname = \"{name}\"\nenabled = false\n\n"
        ));
    }
    for (name, missed) in entries {
        text.push_str(&format!(
            "[[entry]]\nname = \"{name}\"\ncron = \"* * * * * *\"\nkind = \"prune\"\n\
             payload = {{ dry_run = true, only = [\"leases\"] }}\nmissed = \"{missed}\"\n\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("qb-schedule-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).expect("schedule file");
    path
}

struct Scheduler {
    child: Child,
    metrics: u16,
}

impl Scheduler {
    fn start(app: &TestApp, file: &std::path::Path) -> Self {
        let metrics = free_port();
        let log = std::env::temp_dir().join(format!("qb-scheduler-{}.log", uuid::Uuid::new_v4()));
        let child = Command::new(env!("CARGO_BIN_EXE_questboard"))
            .arg("schedule")
            .env("DATABASE_URL", &app.db.url)
            .env("REDIS_URL", redis_url())
            .env("QB_SCHEDULE_FILE", file)
            .env("QB_LEASE_TTL_MS", "2000")
            .env("QB_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("questboard schedule");
        Self { child, metrics }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of a counter or gauge line that starts with `prefix`.
    async fn value(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ticks enqueued for `entry`: tick time -> (job id, catch-up).
async fn ticks(app: &TestApp, entry: &str) -> BTreeMap<DateTime<Utc>, (String, bool)> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, metadata -> 'tick', metadata -> 'catch_up' FROM apalis.jobs
         WHERE metadata -> 'schedule_entry' = $1",
    )
    .bind(entry)
    .fetch_all(&app.db.pool)
    .await
    .expect("ticks");
    rows.into_iter()
        .map(|(id, tick, catch_up)| (tick.parse().expect("tick time"), (id, catch_up == "true")))
        .collect()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_schedulers_enqueue_every_tick_once_and_a_killed_leader_is_replaced() {
    let app = TestApp::spawn().await;
    let file = schedule_file(&[("tick", "skip")]);
    let mut a = Scheduler::start(&app, &file);
    let mut b = Scheduler::start(&app, &file);
    wait_until("the first ticks", Duration::from_secs(15), || async {
        ticks(&app, "tick").await.len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    // One leads; every tick from the first to the last was enqueued once,
    // or counted as skipped by the leader (never both, never twice).
    let leading = (
        a.value("questboard_leader{scope=\"scheduler\"}").await,
        b.value("questboard_leader{scope=\"scheduler\"}").await,
    );
    assert!(
        leading == (1.0, 0.0) || leading == (0.0, 1.0),
        "leaders: {leading:?}"
    );
    let fired = a
        .value("questboard_schedule_ticks_total{entry=\"tick\",outcome=\"fired\"}")
        .await
        + b.value("questboard_schedule_ticks_total{entry=\"tick\",outcome=\"fired\"}")
            .await;
    let skipped = a
        .value("questboard_schedule_ticks_total{entry=\"tick\",outcome=\"skipped\"}")
        .await
        + b.value("questboard_schedule_ticks_total{entry=\"tick\",outcome=\"skipped\"}")
            .await;
    let enqueued = ticks(&app, "tick").await;
    let (first, last) = (
        *enqueued.keys().next().expect("first"),
        *enqueued.keys().last().expect("last"),
    );
    let span = (last - first).num_seconds() + 1;
    assert!(enqueued.len() >= 10, "{} ticks in 10 s", enqueued.len());
    assert!(
        enqueued.values().all(|(_, catch_up)| !catch_up),
        "skip never catches up"
    );
    // The counters can be a tick ahead of the table (read later).
    assert!(
        (fired as i64 - enqueued.len() as i64).abs() <= 1,
        "fired {fired}, enqueued {}",
        enqueued.len()
    );
    assert!(
        (enqueued.len() as i64 + skipped as i64 - span).abs() <= 1,
        "{} enqueued + {skipped} skipped over {span} ticks",
        enqueued.len()
    );

    // Kill the leader outright: the other fires within TTL + 1 s.
    let leader_is_a = leading.0 == 1.0;
    let (doomed, survivor) = if leader_is_a {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    doomed.child.kill().expect("kill -9");
    doomed.child.wait().expect("reap");
    let killed = Utc::now();
    wait_until("the survivor to lead", Duration::from_secs(10), || async {
        survivor
            .value("questboard_leader{scope=\"scheduler\"}")
            .await
            == 1.0
    })
    .await;
    wait_until(
        "a tick after the takeover",
        Duration::from_secs(10),
        || async {
            ticks(&app, "tick")
                .await
                .values()
                .any(|(id, _)| enqueued_at(id) > killed)
        },
    )
    .await;
    let first_after = ticks(&app, "tick")
        .await
        .values()
        .map(|(id, _)| enqueued_at(id))
        .filter(|at| *at > killed)
        .min()
        .expect("a tick after the kill");
    let took = first_after - killed;
    assert!(
        took <= chrono::TimeDelta::milliseconds(2000 + 1000),
        "the survivor fired {took} after the leader died (TTL 2 s)"
    );
    let changes = survivor
        .value("questboard_leader_changes_total{scope=\"scheduler\"}")
        .await;
    assert!(changes >= 1.0);
}

/// When a job was enqueued: its ULID's time.
fn enqueued_at(id: &str) -> DateTime<Utc> {
    let ms = ulid_millis(id);
    DateTime::from_timestamp_millis(ms).expect("time")
}

fn ulid_millis(id: &str) -> i64 {
    // The first 10 characters of a ULID are its millisecond timestamp in
    // Crockford's base32.
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    id.bytes().take(10).fold(0i64, |acc, b| {
        acc * 32 + ALPHABET.iter().position(|c| *c == b).expect("ulid") as i64
    })
}

#[tokio::test]
async fn a_scheduler_down_for_three_ticks_catches_up_once_or_skips() {
    let app = TestApp::spawn().await;
    let file = schedule_file(&[("tick-once", "once"), ("tick-skip", "skip")]);
    let mut first = Scheduler::start(&app, &file);
    wait_until("ticks before the stop", Duration::from_secs(15), || async {
        ticks(&app, "tick-once").await.len() >= 2 && ticks(&app, "tick-skip").await.len() >= 2
    })
    .await;
    first.terminate();
    // SIGTERM gave the lease up: no one holds it now.
    let held: Option<String> =
        sqlx::query_scalar("SELECT holder FROM leases WHERE scope = 'scheduler' AND key = 'cron'")
            .fetch_one(&app.db.pool)
            .await
            .expect("lease");
    assert_eq!(held, None, "the leader released its lease on SIGTERM");
    let stopped_after: BTreeMap<&str, DateTime<Utc>> = [
        (
            "tick-once",
            *ticks(&app, "tick-once").await.keys().last().expect("tick"),
        ),
        (
            "tick-skip",
            *ticks(&app, "tick-skip").await.keys().last().expect("tick"),
        ),
    ]
    .into_iter()
    .collect();
    // Down for three ticks: until the clock is past the third tick either
    // entry missed (they tick every whole second).
    let third_missed = *stopped_after.values().max().expect("ticks") + TimeDelta::seconds(3);
    wait_until("three missed ticks", Duration::from_secs(15), || async {
        Utc::now() > third_missed
    })
    .await;
    let restarted = Utc::now();
    let mut second = Scheduler::start(&app, &file);
    wait_until(
        "ticks after the restart",
        Duration::from_secs(15),
        || async {
            ticks(&app, "tick-once")
                .await
                .keys()
                .filter(|t| **t > restarted)
                .count()
                >= 2
        },
    )
    .await;
    second.terminate();

    for (entry, expected) in [("tick-once", 1), ("tick-skip", 0)] {
        let all = ticks(&app, entry).await;
        // The downtime's catch-ups (a tick before the restart). Under
        // `once`, a tick the restarted scheduler itself fired late, on a
        // starved machine, is another miss and may be caught up too: not
        // counted here. Under `skip` no tick is ever caught up.
        let catch_ups: Vec<(&DateTime<Utc>, &(String, bool))> = all
            .iter()
            .filter(|(t, (_, c))| *c && (expected == 0 || **t < restarted))
            .collect();
        assert_eq!(catch_ups.len(), expected, "{entry}: {all:#?}");
        // Ticks of the downtime (after the last before the stop, before the
        // restart) fired only as that one catch-up, never as a flood.
        let down: Vec<&DateTime<Utc>> = all
            .keys()
            .filter(|t| {
                **t > stopped_after[entry] && **t < restarted - chrono::TimeDelta::seconds(1)
            })
            .collect();
        assert!(down.len() <= expected, "{entry}: downtime ticks {down:?}");
        if let Some((tick, _)) = catch_ups.first() {
            assert!(
                **tick > stopped_after[entry] && **tick < restarted,
                "{tick}"
            );
        }
    }
}

#[tokio::test]
async fn a_bad_schedule_file_is_refused_at_start_with_its_line() {
    let app = TestApp::spawn().await;
    let path = std::env::temp_dir().join(format!("qb-bad-schedule-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "[[entry]]\nname = \"nightly\"\ncron = \"0 3 * * *\"\nkind = \"prune\"\ntimezone = \"Mars/Olympus\"\n",
    )
    .expect("file");
    let url = app.db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_questboard"))
            .arg("schedule")
            .env("DATABASE_URL", url)
            .env("QB_SCHEDULE_FILE", &path)
            .env("QB_METRICS_ADDR", "127.0.0.1:0")
            .output()
            .expect("questboard schedule")
    })
    .await
    .expect("run");
    assert!(!out.status.success(), "a bad schedule file was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":5:") && err.contains("unknown time zone \"Mars/Olympus\""),
        "{err}"
    );
}

#[tokio::test]
async fn an_operator_runs_an_entry_now_and_a_double_click_makes_one_job() {
    use chrono::Timelike as _;
    use reqwest::Method;
    let app = TestApp::spawn().await;
    // The key is per minute: stay clear of a minute's end.
    if Utc::now().second() >= 55 {
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let first = app
        .op(Method::POST, "/api/admin/schedule/reconcile/run", None)
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["created"], true);
    let job = first.body["job_id"].as_str().expect("job_id").to_owned();
    let again = app
        .op(Method::POST, "/api/admin/schedule/reconcile/run", None)
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["job_id"], job.as_str(), "the same job");
    assert_eq!(again.body["created"], false);

    let detail = app.job_detail(&job).await;
    assert_eq!(detail["kind"], "reconcile");
    assert_eq!(detail["metadata"]["run_now"], "true", "{detail:#}");
    assert_eq!(detail["metadata"]["schedule_entry"], "reconcile");
    assert_eq!(detail["metadata"]["enqueued_by"], "ops");
    assert!(
        detail["unique_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("reconcile@run:")),
        "{detail:#}"
    );

    let missing = app
        .op(Method::POST, "/api/admin/schedule/no-such-entry/run", None)
        .await;
    assert_eq!(missing.status, 404);
    let viewer = app.token_with("vera", questboard::auth::Access::Viewer);
    let forged = app
        .client
        .post(app.url("/api/admin/schedule/reconcile/run"))
        .bearer_auth(viewer)
        .send()
        .await
        .expect("request");
    assert_eq!(forged.status(), 403);

    let log = app
        .op(Method::GET, "/api/admin/audit?action=schedule.run", None)
        .await;
    let outcomes: Vec<(&str, &str)> = log.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["target"].as_str().unwrap_or_default(),
                e["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("no-such-entry", "refused"),
            ("reconcile", "ok"),
            ("reconcile", "ok")
        ]
    );
    assert_eq!(log.body["entries"][2]["detail"]["result"]["created"], true);
    assert_eq!(log.body["entries"][1]["detail"]["result"]["created"], false);
}
