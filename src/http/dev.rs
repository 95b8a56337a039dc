//! Sign-in by user name for `questboard dev`: `POST /dev/token
//! {"user": "alice"}` answers a token for that user (`"access":
//! "operator"` or `"viewer"` adds that permission, for the operators'
//! routes), so the pages can be used locally without an identity provider. The route exists only in a
//! process started by `questboard dev` (never in `serve`): anyone who can
//! reach it can be anyone.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use questboard_core::identity::UserId;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{Error, Result};
use super::extract::Json;
use crate::auth;
use crate::config::Config;

/// How long a dev token lasts.
pub const TTL: Duration = Duration::from_secs(12 * 3600);

/// Mints dev tokens with the process's own secret.
#[derive(Clone)]
pub struct DevTokens {
    config: Arc<Config>,
}

impl std::fmt::Debug for DevTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevTokens")
    }
}

impl DevTokens {
    /// Dev sign-in for a process configured by `config`; fails when the
    /// configuration cannot mint tokens (no `QB_JWT_SECRET`, or a weak one).
    pub fn new(config: &Config) -> std::result::Result<Self, auth::ConfigError> {
        let probe = UserId::parse("probe").map_err(|_| auth::ConfigError::NoSecret)?;
        auth::mint(config, &probe, TTL)?;
        Ok(Self {
            config: Arc::new(config.clone()),
        })
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/dev/token", post(dev_token))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    user: String,
    #[serde(default)]
    access: Option<DevAccess>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DevAccess {
    Player,
    Viewer,
    Operator,
}

#[derive(Debug, Serialize)]
struct Token {
    token: String,
    user_id: String,
}

async fn dev_token(State(state): State<AppState>, Json(body): Json<SignIn>) -> Result<Json<Token>> {
    let Some(dev) = state.dev_tokens.as_ref() else {
        return Err(Error::NotFound("route"));
    };
    let user = UserId::parse(body.user.trim()).map_err(|err| Error::BadRequest {
        code: "INVALID_USER",
        message: format!("user: {err}"),
    })?;
    let access = match body.access {
        None | Some(DevAccess::Player) => auth::Access::None,
        Some(DevAccess::Viewer) => auth::Access::Viewer,
        Some(DevAccess::Operator) => auth::Access::Operator,
    };
    let token = auth::mint_with(&dev.config, &user, TTL, access)
        .map_err(|err| Error::Internal(err.into()))?;
    Ok(Json(Token {
        token,
        user_id: user.as_str().to_owned(),
    }))
}
