//! Lease primitives against real Postgres: exclusivity, growing fencing
//! tokens, takeover after expiry, and fenced writes refused for a stale holder.

use std::time::Duration;

use questboard_core::identity::UserId;
use questboard_core::leases::{self, Acquisition, SESSION_SCOPE};
use questboard_core::turns::{self, NewTurn};

use crate::helpers::TestDb;

#[tokio::test]
async fn a_lease_is_exclusive_until_released_or_expired_and_tokens_only_grow() {
    let db = TestDb::create().await;
    let ttl = Duration::from_millis(400);
    let (a, how) = leases::try_acquire(&db.pool, "scheduler", "cron", "a", ttl)
        .await
        .expect("db")
        .expect("free");
    assert_eq!(how, Acquisition::Acquired);
    assert!(
        leases::try_acquire(&db.pool, "scheduler", "cron", "b", ttl)
            .await
            .expect("db")
            .is_none(),
        "busy"
    );
    assert!(leases::renew(&db.pool, &a, ttl).await.expect("db"));

    // Clean release: the next holder acquires at once, not as a takeover.
    assert!(leases::release(&db.pool, &a).await.expect("db"));
    let (b, how) = leases::try_acquire(&db.pool, "scheduler", "cron", "b", ttl)
        .await
        .expect("db")
        .expect("free");
    assert_eq!(how, Acquisition::Acquired);
    assert!(b.token > a.token);
    assert!(
        !leases::renew(&db.pool, &a, ttl).await.expect("db"),
        "a released lease cannot be renewed"
    );

    // B goes silent: after the TTL, C takes over (and that is reported).
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let (c, how) = leases::try_acquire(&db.pool, "scheduler", "cron", "c", ttl)
        .await
        .expect("db")
        .expect("expired");
    assert_eq!(how, Acquisition::TakenOver);
    assert!(c.token > b.token);
    assert!(
        !leases::renew(&db.pool, &b, ttl).await.expect("db"),
        "the stale holder cannot renew"
    );
    assert!(
        !leases::release(&db.pool, &b).await.expect("db"),
        "nor release the new holder's lease"
    );
    assert!(leases::renew(&db.pool, &c, ttl).await.expect("db"));

    // The fence admits the current token only.
    let mut conn = db.pool.acquire().await.expect("conn");
    assert!(
        leases::check_fence(&mut conn, "scheduler", "cron", c.token)
            .await
            .is_ok()
    );
    assert!(matches!(
        leases::check_fence(&mut conn, "scheduler", "cron", b.token).await,
        Err(leases::Error::Fenced { .. })
    ));
}

#[tokio::test]
async fn a_stale_holders_turn_writes_are_refused_by_the_fence() {
    let db = TestDb::create().await;
    let owner = UserId::parse("alice").expect("user");
    let name = questboard_core::sessions::SessionName::parse("Fence").expect("name");
    let session = questboard_core::sessions::create(&db.pool, &owner, &name)
        .await
        .expect("session")
        .session
        .id;
    let turn = turns::submit(
        &db.pool,
        NewTurn {
            session_id: session,
            author: &owner,
            input: "hello",
            idempotency_key: None,
            max_attempts: 3,
        },
    )
    .await
    .expect("submit")
    .turn;

    let key = session.to_string();
    let ttl = Duration::from_millis(300);
    let (stale, _) = leases::try_acquire(&db.pool, SESSION_SCOPE, &key, "stale", ttl)
        .await
        .expect("db")
        .expect("free");
    assert_eq!(
        turns::start(&db.pool, &turn, &stale)
            .await
            .expect("start")
            .0,
        1
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let (fresh, how) = leases::try_acquire(&db.pool, SESSION_SCOPE, &key, "fresh", ttl * 10)
        .await
        .expect("db")
        .expect("expired");
    assert_eq!(how, Acquisition::TakenOver);

    // Every kind of write by the stale holder is refused...
    assert!(matches!(
        turns::complete(&db.pool, &turn, &stale, "stale reply").await,
        Err(turns::Error::Fenced(_))
    ));
    assert!(matches!(
        turns::fail(&db.pool, &turn, &stale, "x").await,
        Err(turns::Error::Fenced(_))
    ));
    assert!(matches!(
        turns::retry_later(&db.pool, &turn, &stale, "x", Duration::from_secs(1)).await,
        Err(turns::Error::Fenced(_))
    ));
    assert!(matches!(
        turns::start(&db.pool, &turn, &stale).await,
        Err(turns::Error::Fenced(_))
    ));
    // ...while the new holder's reply is recorded, once.
    assert_eq!(
        turns::start(&db.pool, &turn, &fresh)
            .await
            .expect("start")
            .0,
        2
    );
    let (written, event) = turns::complete(&db.pool, &turn, &fresh, "fresh reply")
        .await
        .expect("complete");
    assert!(written);
    assert_eq!(event.map(|e| e.kind).as_deref(), Some("turn.completed"));
    let (again, event) = turns::complete(&db.pool, &turn, &fresh, "again")
        .await
        .expect("complete");
    assert!(!again && event.is_none(), "recorded once, one event");
    let (output, fence): (String, i64) =
        sqlx::query_as("SELECT output, fence_token FROM turns WHERE id = $1")
            .bind(turn.id)
            .fetch_one(&db.pool)
            .await
            .expect("turn");
    assert_eq!((output.as_str(), fence), ("fresh reply", fresh.token));
}
