//! Who is calling: verifying bearer JWTs and minting development tokens.
//!
//! Two modes, chosen by configuration:
//! - **HS256** with `QB_JWT_SECRET`: for development and for deployments that
//!   mint their own tokens (`questboard token` prints one).
//! - **RS256** with `QB_JWKS_URL` (Auth0-style): public keys are fetched from
//!   the JWKS endpoint, cached, refreshed every [`JWKS_MAX_AGE`], and fetched
//!   again (at most every [`JWKS_MIN_REFETCH`]) when a token names a key id
//!   the cache does not know, so a key rotation needs no restart.
//!
//! Only the configured algorithm is accepted: `alg: none`, an HS256 token
//! against a JWKS deployment (the key-confusion attack) or an RS256 token
//! against a secret are all refused. `exp` and `sub` are required; `sub` is
//! the user id.
//!
//! **Operators** are callers whose token carries the permission
//! [`OPERATOR_PERMISSION`], either in a `permissions` array (Auth0's RBAC
//! claim) or in a space-separated `scope`; only they act through
//! `/api/admin`. **Viewers** carry [`VIEWER_PERMISSION`] instead: they read
//! every `/api/admin` route and act on nothing ([`Access`]).
//! `questboard token --operator` (or `--viewer`) mints one for development.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use questboard_core::identity::UserId;
use questboard_core::metrics as m;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use url::Url;

use crate::config::{Config, Secret};

/// How long fetched JWKS keys are trusted before being fetched again.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// The least time between two fetches triggered by unknown key ids.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;
/// Longest bearer token accepted, in bytes (header or `access_token`
/// parameter): real tokens are well under 2 KiB, and a longer one is
/// refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;
/// The permission that makes a caller an operator.
pub const OPERATOR_PERMISSION: &str = "questboard:operator";
/// The permission that lets a caller read the operators' routes, and act
/// on nothing.
pub const VIEWER_PERMISSION: &str = "questboard:viewer";

/// What a caller may do with the operators' routes (each level includes
/// the ones below it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Access {
    /// A player: no operators' route.
    #[default]
    None,
    /// Reads every operators' route, acts on nothing.
    Viewer,
    /// Reads and acts.
    Operator,
}

impl Access {
    /// The permission a token carries for this level, if any.
    pub fn permission(self) -> Option<&'static str> {
        match self {
            Access::None => None,
            Access::Viewer => Some(VIEWER_PERMISSION),
            Access::Operator => Some(OPERATOR_PERMISSION),
        }
    }
}

/// The claims questboard reads from a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Granted permissions (Auth0 RBAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Granted scopes, space-separated (OAuth 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Claims {
    /// Whether the token grants `permission`.
    fn grants(&self, permission: &str) -> bool {
        self.permissions.iter().flatten().any(|p| p == permission)
            || self
                .scope
                .as_deref()
                .is_some_and(|s| s.split_whitespace().any(|p| p == permission))
    }

    /// Whether the token grants the operator permission.
    pub fn is_operator(&self) -> bool {
        self.grants(OPERATOR_PERMISSION)
    }

    /// What the token lets its bearer do with the operators' routes.
    pub fn access(&self) -> Access {
        if self.is_operator() {
            Access::Operator
        } else if self.grants(VIEWER_PERMISSION) {
            Access::Viewer
        } else {
            Access::None
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who.
    pub user: UserId,
    /// What they may do with the operators' routes.
    pub access: Access,
    /// When the token expires (`exp`, seconds since the Unix epoch): a
    /// WebSocket opened with it is closed then (plus [`LEEWAY_SECS`]).
    pub expires_at: u64,
}

/// Why a bearer token was refused. The message is safe to show a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing bearer token")]
    Missing,
    /// More than one `Authorization` header: which one is meant is
    /// ambiguous, so none is used (400).
    #[error("more than one Authorization header")]
    Ambiguous,
    /// The header is not `Bearer <token>` or the token is not a JWT.
    #[error("malformed bearer token")]
    Malformed,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("bearer token too long (at most 8 KiB)")]
    TooLong,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// Wrong signature, algorithm, issuer, audience or claims.
    #[error("invalid token")]
    Invalid,
    /// The token names a signing key the JWKS endpoint does not publish.
    #[error("unknown signing key")]
    UnknownKey,
    /// The JWKS endpoint could not be reached and no cached key matched.
    #[error("signing keys unavailable")]
    KeysUnavailable,
}

impl AuthError {
    /// Every reason, for metrics registered at 0.
    pub const ALL: [AuthError; 8] = [
        AuthError::Missing,
        AuthError::Ambiguous,
        AuthError::Malformed,
        AuthError::TooLong,
        AuthError::Expired,
        AuthError::Invalid,
        AuthError::UnknownKey,
        AuthError::KeysUnavailable,
    ];

    /// A label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Ambiguous => "ambiguous",
            AuthError::Malformed => "malformed",
            AuthError::TooLong => "too_long",
            AuthError::Expired => "expired",
            AuthError::Invalid => "invalid",
            AuthError::UnknownKey => "unknown_key",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Configuration that cannot produce a working verifier.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither or both of the secret and the JWKS URL were given.
    #[error("set exactly one of QB_JWT_SECRET (HS256) and QB_JWKS_URL (RS256)")]
    Mode,
    /// The secret is too short to be safe.
    #[error("QB_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")]
    WeakSecret,
    /// JWKS mode without issuer or audience.
    #[error("QB_JWKS_URL requires QB_JWT_ISSUER and QB_JWT_AUDIENCE")]
    JwksClaims,
    /// Minting needs a secret.
    #[error("minting tokens needs QB_JWT_SECRET")]
    NoSecret,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Verifies bearer tokens.
#[derive(Debug)]
pub enum Verifier {
    /// HS256 with a shared secret.
    Shared {
        /// The key.
        key: Box<DecodingKey>,
        /// What is checked.
        validation: Box<Validation>,
    },
    /// RS256 with keys from a JWKS endpoint.
    Jwks(Box<JwksVerifier>),
}

impl Verifier {
    /// Builds the verifier the configuration asks for.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        match (&config.jwt_secret, &config.jwks_url) {
            (Some(secret), None) => Self::shared(
                secret,
                config.jwt_issuer.as_deref(),
                config.jwt_audience.as_deref(),
            ),
            (None, Some(url)) => {
                let (Some(issuer), Some(audience)) = (&config.jwt_issuer, &config.jwt_audience)
                else {
                    return Err(ConfigError::JwksClaims);
                };
                Ok(Self::Jwks(Box::new(JwksVerifier::new(
                    url.clone(),
                    issuer,
                    audience,
                ))))
            }
            _ => Err(ConfigError::Mode),
        }
    }

    /// An HS256 verifier.
    pub fn shared(
        secret: &Secret,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, ConfigError> {
        if secret.expose().len() < MIN_SECRET_BYTES {
            return Err(ConfigError::WeakSecret);
        }
        Ok(Self::Shared {
            key: Box::new(DecodingKey::from_secret(secret.expose().as_bytes())),
            validation: Box::new(validation(Algorithm::HS256, issuer, audience)),
        })
    }

    /// Verifies `token` and returns the caller's user id.
    pub async fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_caller(token).await.map(|c| c.user)
    }

    /// Verifies `token` and returns the caller.
    pub async fn verify_caller(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        match self {
            Verifier::Shared { key, validation } => decode(token, key, validation),
            Verifier::Jwks(jwks) => jwks.verify(token).await,
        }
    }

    /// Fetches signing keys ahead of the first request (JWKS mode only).
    /// Failure is not fatal: keys are fetched again on demand.
    pub async fn prefetch(&self) {
        if let Verifier::Jwks(jwks) = self
            && let Err(err) = jwks.refresh().await
        {
            tracing::warn!(error = %err, "could not fetch JWKS at startup; will retry on demand");
        }
    }
}

/// Counts a refused caller. The HTTP edge calls it for every 401 it
/// answers (a missing token included; a token that was not needed, such as
/// beside a valid signed link, is not counted), the socket for a refused
/// re-authentication.
pub fn count_refusal(err: AuthError) {
    metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => err.reason()).increment(1);
}

fn validation(alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    // A token not valid yet is refused like an expired one, with the same
    // leeway (jsonwebtoken leaves `nbf` unchecked by default).
    validation.validate_nbf = true;
    // A configured issuer or audience must be present, not merely correct
    // when present.
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Caller, AuthError> {
    // RFC 7515 4.1.11: a `crit` header names extensions the recipient must
    // understand; questboard understands none, so any is refused.
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        return Err(AuthError::Invalid);
    }
    let data =
        jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|err| match err.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            _ => AuthError::Invalid,
        })?;
    Ok(Caller {
        user: UserId::parse(&data.claims.sub).map_err(|_| AuthError::Invalid)?,
        access: data.claims.access(),
        expires_at: data.claims.exp,
    })
}

/// RS256 verification against a cached JWKS.
#[derive(Debug)]
pub struct JwksVerifier {
    url: Url,
    client: reqwest::Client,
    validation: Validation,
    cache: RwLock<KeyCache>,
    /// Serialises fetches so a burst of unknown key ids fetches once.
    fetching: Mutex<()>,
}

#[derive(Debug, Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl JwksVerifier {
    /// A verifier for tokens issued by `issuer` for `audience`, signed by keys at `url`.
    pub fn new(url: Url, issuer: &str, audience: &str) -> Self {
        Self {
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            validation: validation(Algorithm::RS256, Some(issuer), Some(audience)),
            cache: RwLock::new(KeyCache::default()),
            fetching: Mutex::new(()),
        }
    }

    async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::Invalid);
        }
        let kid = header.kid.ok_or(AuthError::Invalid)?;
        let stale = {
            let cache = self.cache.read().await;
            let stale = cache.fetched_at.is_none_or(|t| t.elapsed() > JWKS_MAX_AGE);
            if !stale && let Some(key) = cache.keys.get(&kid) {
                return decode(token, key, &self.validation);
            }
            stale
        };
        let unknown_kid_may_refetch = {
            let cache = self.cache.read().await;
            cache
                .attempted_at
                .is_none_or(|t| t.elapsed() > JWKS_MIN_REFETCH)
        };
        let fetch_error = if stale || unknown_kid_may_refetch {
            self.refresh().await.err()
        } else {
            None
        };
        let cache = self.cache.read().await;
        match cache.keys.get(&kid) {
            Some(key) => decode(token, key, &self.validation),
            None if fetch_error.is_some() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    /// Fetches the key set and replaces the cache. On failure the old keys stay.
    pub async fn refresh(&self) -> Result<(), reqwest::Error> {
        let _guard = self.fetching.lock().await;
        // Another request may have just fetched while this one waited.
        if self
            .cache
            .read()
            .await
            .attempted_at
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return Ok(());
        }
        self.cache.write().await.attempted_at = Some(Instant::now());
        let fetched = async {
            self.client
                .get(self.url.clone())
                .send()
                .await?
                .error_for_status()?
                .json::<JwkSet>()
                .await
        }
        .await;
        let set = match fetched {
            Ok(set) => set,
            Err(err) => {
                metrics::counter!(m::JWKS_REFRESHES_TOTAL, "outcome" => "error").increment(1);
                tracing::warn!(error = %err, url = %self.url, "JWKS fetch failed");
                return Err(err);
            }
        };
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
            .filter(|jwk| {
                jwk.common
                    .key_algorithm
                    .is_none_or(|alg| alg == KeyAlgorithm::RS256)
            })
            .filter(|jwk| {
                jwk.common
                    .public_key_use
                    .as_ref()
                    .is_none_or(|u| *u == PublicKeyUse::Signature)
            })
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect();
        metrics::counter!(m::JWKS_REFRESHES_TOTAL, "outcome" => "ok").increment(1);
        let mut cache = self.cache.write().await;
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }
}

/// Mints an HS256 token for `user`, valid for `ttl`, with the configured
/// issuer and audience. For development and tests.
pub fn mint(config: &Config, user: &UserId, ttl: Duration) -> Result<String, ConfigError> {
    mint_with(config, user, ttl, Access::None)
}

/// Like [`mint`], the token carrying the permission of `access` (if any)
/// in its `permissions`.
pub fn mint_with(
    config: &Config,
    user: &UserId,
    ttl: Duration,
    access: Access,
) -> Result<String, ConfigError> {
    let secret = config.jwt_secret.as_ref().ok_or(ConfigError::NoSecret)?;
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(ConfigError::WeakSecret);
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: user.as_str().to_owned(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        iss: config.jwt_issuer.clone(),
        aud: config.jwt_audience.clone(),
        permissions: access.permission().map(|p| vec![p.to_owned()]),
        scope: None,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}
