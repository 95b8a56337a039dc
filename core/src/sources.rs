//! Where operators may point questboard: the sources of asset migrations
//! (the old service's Postgres) and legacy imports (a tree on disk, S3 or
//! GCS).
//!
//! A source URL comes from an operator, but questboard connects to it with
//! its own network position and, for buckets, its own credentials: left
//! open, a migration is a way to reach any database on the network (as
//! whoever the URL names) and an import a way to read any bucket the
//! server's credential chain can. So:
//!
//! - **An allowlist.** `QB_MIGRATION_SOURCES` lists the sources operators
//!   may use (comma-separated URLs without credentials:
//!   `postgres://old-db.internal:5432/campaigns`, `s3://legacy-archive/`,
//!   `file:///srv/legacy`). A source matches an entry with the same
//!   scheme, host and port (Postgres's default 5432 when none is given) whose
//!   path is a whole-segment prefix of its own. **Empty (the default) allows
//!   any source**: set it in production.
//! - **No redirection inside the URL.** A Postgres URL's query may set only
//!   `sslmode` and `application_name`: `host=`, `hostaddr=`, `port=`,
//!   `dbname=` (which would move the connection past the allowlist) and
//!   `passfile=` and friends (which read local files) are refused.
//! - **Bounded.** A source connection must be made within
//!   [`CONNECT_TIMEOUT`] (a port that is not Postgres cannot hold a job's
//!   slot), and every statement on it ends within [`STATEMENT_TIMEOUT`].
//! - **Stable errors.** What went wrong reaches operators as a
//!   [`SourceError`] code with a fixed message; the driver's or cloud
//!   client's own text (host names, roles, metadata endpoints) goes to the
//!   server log only.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use url::Url;

/// Longest a source connection may take to be made.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one statement on a source may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The query parameters a Postgres source URL may carry.
pub const ALLOWED_PG_PARAMS: [&str; 2] = ["sslmode", "application_name"];

/// Why a source cannot be used, as operators see it: a stable code and a
/// fixed message (the cause is in the server log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Not in `QB_MIGRATION_SOURCES`.
    #[error("source_not_allowed: the source is not in QB_MIGRATION_SOURCES")]
    NotAllowed,
    /// The URL tries to redirect the connection or read local files.
    #[error("source_refused: {0}")]
    Refused(&'static str),
    /// Nothing answered as the source should within the timeout (or at all).
    #[error("source_unreachable: the source could not be reached (details in the server log)")]
    Unreachable,
    /// The source refused the credentials.
    #[error("source_auth_failed: the source refused the credentials (details in the server log)")]
    AuthFailed,
    /// No such database, bucket or tree.
    #[error("source_not_found: the source's database, bucket or folder does not exist")]
    NotFound,
    /// A statement ran past [`STATEMENT_TIMEOUT`].
    #[error("source_timeout: a statement on the source ran too long")]
    Timeout,
    /// Anything else.
    #[error("source_error: the source failed (details in the server log)")]
    Failed,
}

impl SourceError {
    /// The code alone.
    pub fn code(self) -> &'static str {
        match self {
            SourceError::NotAllowed => "source_not_allowed",
            SourceError::Refused(_) => "source_refused",
            SourceError::Unreachable => "source_unreachable",
            SourceError::AuthFailed => "source_auth_failed",
            SourceError::NotFound => "source_not_found",
            SourceError::Timeout => "source_timeout",
            SourceError::Failed => "source_error",
        }
    }

    /// Whether operators caused it (the request is wrong: 422), rather
    /// than the source being unwell (503).
    pub fn is_request(self) -> bool {
        matches!(self, SourceError::NotAllowed | SourceError::Refused(_))
    }
}

/// The sources operators may use (`QB_MIGRATION_SOURCES`).
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Url>,
}

impl Allowlist {
    /// Any source (an empty `QB_MIGRATION_SOURCES`).
    pub fn any() -> Self {
        Self::default()
    }

    /// The allowlist of `entries` (blank ones ignored); an entry that is not
    /// a URL, or carries credentials or a query, is refused with why.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for entry in entries.iter().map(|e| e.as_ref().trim()) {
            if entry.is_empty() {
                continue;
            }
            let url = Url::parse(entry)
                .map_err(|e| format!("QB_MIGRATION_SOURCES entry {entry:?}: {e}"))?;
            if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
                return Err(format!(
                    "QB_MIGRATION_SOURCES entry {entry:?}: no credentials or query, only where"
                ));
            }
            parsed.push(url);
        }
        Ok(Self { entries: parsed })
    }

    /// Whether every source is allowed (no entries).
    pub fn allows_any(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks `source` against the list (and a Postgres URL's query).
    pub fn check(&self, source: &str) -> Result<(), SourceError> {
        let url = Url::parse(source).map_err(|_| SourceError::Refused("not a URL"))?;
        if is_postgres(&url) {
            check_pg_query(&url)?;
        }
        if self.entries.is_empty() || self.entries.iter().any(|entry| covers(entry, &url)) {
            Ok(())
        } else {
            tracing::warn!(source = %without_credentials(&url), "a source outside QB_MIGRATION_SOURCES was refused");
            Err(SourceError::NotAllowed)
        }
    }
}

fn is_postgres(url: &Url) -> bool {
    matches!(url.scheme(), "postgres" | "postgresql")
}

/// The port a URL reaches (Postgres's 5432 when it names none).
fn port_of(url: &Url) -> Option<u16> {
    url.port_or_known_default()
        .or_else(|| is_postgres(url).then_some(5432))
}

/// Whether allowlist `entry` covers `source`.
fn covers(entry: &Url, source: &Url) -> bool {
    let same_scheme =
        entry.scheme() == source.scheme() || (is_postgres(entry) && is_postgres(source));
    let host = |u: &Url| u.host_str().map(str::to_ascii_lowercase);
    let segments = |u: &Url| -> Vec<String> {
        u.path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (want, have) = (segments(entry), segments(source));
    same_scheme
        && host(entry) == host(source)
        && port_of(entry) == port_of(source)
        && have.len() >= want.len()
        && want.iter().zip(&have).all(|(w, h)| w == h)
}

fn check_pg_query(url: &Url) -> Result<(), SourceError> {
    for (key, _) in url.query_pairs() {
        if !ALLOWED_PG_PARAMS.contains(&key.as_ref()) {
            return Err(SourceError::Refused(
                "a source URL's query may set only sslmode and application_name (no host, hostaddr, port, dbname or file parameters)",
            ));
        }
    }
    Ok(())
}

/// `url` without its user name and password, for logs.
pub fn without_credentials(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The connection options of the Postgres source `url`, checked against
/// `allowlist`, with [`STATEMENT_TIMEOUT`] (and a lock timeout) set.
fn pg_options(allowlist: &Allowlist, url: &str) -> Result<PgConnectOptions, SourceError> {
    allowlist.check(url)?;
    let options: PgConnectOptions = url.parse().map_err(|err: sqlx::Error| {
        tracing::warn!(error = %err, "a source URL could not be read");
        SourceError::Refused("not a Postgres URL")
    })?;
    Ok(options.options([
        (
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        ),
        ("lock_timeout", "10s".to_owned()),
    ]))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
}

/// A pool on the Postgres source `url` (checked against `allowlist`)
/// whose connections are made when first needed, each within
/// [`CONNECT_TIMEOUT`] (the serving route's pools).
pub fn pg_pool_lazy(
    allowlist: &Allowlist,
    url: &str,
    max_connections: u32,
) -> Result<PgPool, SourceError> {
    let options = pg_options(allowlist, url)?;
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

/// A pool on the Postgres source `url` (checked against `allowlist`) with
/// one connection made now, within [`CONNECT_TIMEOUT`]: a source that
/// cannot be reached (a port that is not Postgres included) fails here.
pub async fn pg_connect(
    allowlist: &Allowlist,
    url: &str,
    max_connections: u32,
) -> Result<PgPool, SourceError> {
    let options = pg_options(allowlist, url)?;
    let connect = pool_options(max_connections).connect_with(options);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(err)) => Err(pg_error(&err)),
        Err(_) => {
            tracing::warn!("connecting to a source timed out");
            Err(SourceError::Unreachable)
        }
    }
}

/// What a failure on a Postgres source is, as operators see it; the cause
/// is logged here.
pub fn pg_error(err: &sqlx::Error) -> SourceError {
    tracing::warn!(error = %err, "an operation on a source database failed");
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => SourceError::AuthFailed,
            Some("3D000") => SourceError::NotFound,
            Some("57014") => SourceError::Timeout,
            _ => SourceError::Failed,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => SourceError::Unreachable,
        _ => SourceError::Failed,
    }
}

/// What a failure on an object-store or local source is, as operators
/// see it; the cause is logged here.
pub fn store_error(err: &crate::storage::Error) -> SourceError {
    use crate::storage::Error as E;
    tracing::warn!(error = %err, "an operation on a legacy source failed");
    match err {
        E::NotFound => SourceError::NotFound,
        E::Config(_) | E::InvalidName(_) => SourceError::Refused("not a usable source"),
        E::Backend(object_store::Error::PermissionDenied { .. })
        | E::Backend(object_store::Error::Unauthenticated { .. }) => SourceError::AuthFailed,
        E::Backend(object_store::Error::NotFound { .. }) => SourceError::NotFound,
        E::Backend(_) => SourceError::Unreachable,
        _ => SourceError::Failed,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_empty_list_allows_any_source_but_never_a_redirect() {
        let any = Allowlist::parse::<&str>(&[]).unwrap();
        assert!(any.allows_any());
        assert_eq!(any.check("postgres://u:p@db.example/old"), Ok(()));
        assert_eq!(any.check("file:///srv/legacy"), Ok(()));
        for redirect in [
            "postgres://u:p@db.example/old?host=/var/run/postgresql",
            "postgres://u:p@db.example/old?hostaddr=10.0.0.1",
            "postgres://u:p@db.example/old?port=6543",
            "postgres://u:p@db.example/old?dbname=postgres",
            "postgresql://db.example/old?passfile=/etc/shadow",
        ] {
            assert!(
                matches!(any.check(redirect), Err(SourceError::Refused(_))),
                "{redirect}"
            );
        }
        assert_eq!(
            any.check("postgres://u:p@db.example/old?sslmode=require"),
            Ok(())
        );
    }

    #[test]
    fn entries_match_by_scheme_host_port_and_whole_path_segments() {
        let list = Allowlist::parse(&[
            "postgres://old-db.internal/campaigns",
            "s3://legacy-archive/",
            "file:///srv/legacy",
        ])
        .unwrap();
        for ok in [
            "postgres://app:secret@old-db.internal/campaigns",
            "postgresql://app:secret@OLD-DB.internal:5432/campaigns",
            "s3://legacy-archive/old-app",
            "file:///srv/legacy/2019",
        ] {
            assert_eq!(list.check(ok), Ok(()), "{ok}");
        }
        for refused in [
            "postgres://app:secret@old-db.internal/postgres",
            "postgres://app:secret@old-db.internal:6543/campaigns",
            "postgres://app:secret@other.internal/campaigns",
            "postgres://app:secret@old-db.internal/campaigns-2",
            "s3://another-bucket/old-app",
            "gs://legacy-archive/old-app",
            "file:///srv/legacy-other",
            "file:///etc",
        ] {
            assert_eq!(
                list.check(refused),
                Err(SourceError::NotAllowed),
                "{refused}"
            );
        }
        assert!(Allowlist::parse(&["postgres://u:p@db/x"]).is_err());
        assert!(Allowlist::parse(&["not a url"]).is_err());
    }
}
