//! The one typed configuration of a questboard process.
//!
//! Every setting comes from an environment variable (or the matching flag),
//! with a doc comment here that the README's configuration table mirrors.
//! The variable names are fixed: operators' tooling and the black-box tests
//! use them. Secrets are wrapped in [`Secret`] so `Debug` never prints them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use url::Url;

/// A value that must not appear in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Configuration shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Postgres connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/questboard",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub database_url: Secret,

    /// Most Postgres connections this process opens.
    #[arg(long, env = "QB_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,

    /// Redis connection string (pub/sub bridge, readiness).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub redis_url: Secret,

    /// Address the HTTP API listens on.
    #[arg(long, env = "QB_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address the Prometheus `/metrics` listener binds (port 0 picks a free port).
    #[arg(long, env = "QB_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// HS256 secret for bearer tokens (at least 32 bytes). Exactly one of this
    /// and `QB_JWKS_URL` must be set.
    #[arg(long, env = "QB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS endpoint for RS256 bearer tokens (Auth0-style); keys are cached
    /// and refreshed.
    #[arg(long, env = "QB_JWKS_URL")]
    pub jwks_url: Option<Url>,

    /// Required `iss` claim (required with `QB_JWKS_URL`, optional otherwise).
    #[arg(long, env = "QB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim (required with `QB_JWKS_URL`, optional otherwise).
    #[arg(long, env = "QB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Where campaign files live: `file:///abs/path` or a plain path,
    /// `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`.
    #[arg(long, env = "QB_STORAGE_URL", default_value = "./data/storage")]
    pub storage_url: String,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "QB_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Log format.
    #[arg(long, env = "QB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The configuration from the environment alone (no command line), as
    /// tests and embedders use it.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        <Only as clap::Parser>::try_parse_from(["questboard"]).map(|o| o.config)
    }
}
