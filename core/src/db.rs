//! Postgres connection and schema migrations.
//!
//! The migrations in the repository's `migrations/` folder, and those of
//! apalis-postgres, are embedded in the binary, so `questboard migrate`
//! needs nothing but a `DATABASE_URL`.

use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// Every migration questboard has, in order. Applied ones are never edited.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Errors from connecting or migrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or refused the connection.
    #[error("database connection failed: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed to apply.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// apalis-postgres's own migrations failed.
    #[error("apalis migration failed: {0}")]
    Apalis(#[from] apalis_postgres::Error),
}

/// Opens a connection pool of at most `max_connections`.
///
/// Three planner settings for our sessions, all measured with
/// `questboard bench` (see BENCHMARKS.md):
/// - `jit = off`: JIT pays off for long analytical queries, but the
///   estimates for our batched statements (unnest of hundreds of rows) can
///   cross `jit_above_cost`, and compiling then takes longer than running.
/// - `plan_cache_mode = force_generic_plan`: every statement is prepared
///   once per connection and always parameterised by keys and arrays, so
///   one generic plan serves all calls. Left to choose, Postgres kept
///   re-planning the worker's batched write for each call once statistics
///   existed (a custom plan looks cheaper for a one-element array): a
///   millisecond of planning per turn on a hot session, twice the work of
///   running it.
/// - `enable_seqscan = off`: every statement questboard runs reaches its
///   rows by key, but a generic plan is made once per connection, and if it
///   is made while a table is small the planner prefers scanning it whole
///   to probing its index; the plan then stays while the table grows (and
///   fills with row versions between vacuums). A worker's batched write
///   scanning every session row on each call took a core and a half at 400
///   turns/s. Tables with no usable index are still scanned.
///
/// A connection is waited for at most 10 s ([`connect_waiting`] to choose).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, Error> {
    connect_waiting(url, max_connections, Duration::from_secs(10)).await
}

/// [`connect`], waiting at most `acquire_timeout` for a connection (then
/// [`sqlx::Error::PoolTimedOut`]: see [`is_unavailable`]).
pub async fn connect_waiting(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, Error> {
    let options: PgConnectOptions = url.parse().map_err(Error::Connect)?;
    let options = options.options([
        ("jit", "off"),
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .map_err(Error::Connect)
}

/// Whether `err` says the database cannot be reached or cannot serve now
/// (so running the request again later may succeed), not that the request
/// was wrong: no connection within the pool's acquire timeout, a refused
/// or broken connection, Postgres starting up, shutting down or out of
/// connection slots.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P01..03: admin or crash
        // shutdown, cannot connect now; 53300: too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

/// Creates the database named in `url` if it does not exist yet, so a fresh
/// machine needs no manual `createdb`.
pub async fn create_database_if_missing(url: &str) -> Result<(), Error> {
    if !Postgres::database_exists(url)
        .await
        .map_err(Error::Connect)?
    {
        Postgres::create_database(url)
            .await
            .map_err(Error::Connect)?;
    }
    Ok(())
}

/// Applies every pending migration: apalis-postgres's (the `apalis` schema,
/// with its own history table `apalis._sqlx_migrations`) first, because
/// questboard's schema refers to `apalis.jobs`, then questboard's.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Implements `sqlx` text encoding for a fieldless enum with `as_str` and
/// `FromStr`, so roles and statuses are stored as readable text guarded by a
/// `CHECK` constraint rather than as Postgres enum types (which cannot be
/// extended inside a transaction).
#[macro_export]
macro_rules! text_column {
    ($ty:ty) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $ty {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }
        impl<'q> ::sqlx::Encode<'q, ::sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<::sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $ty {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<::sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$ty>()?)
            }
        }
    };
}
