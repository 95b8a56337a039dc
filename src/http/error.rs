//! The one error type of the HTTP API and its JSON shape.
//!
//! Every failure a handler or extractor can produce becomes an [`Error`],
//! rendered as `{"error": {"code": "...", "message": "..."}}` with the right
//! status. Domain errors convert with `From`; internal failures are logged
//! with their cause and shown to the client only as `internal_error`, so no
//! SQL, provider key or stack detail leaks.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use questboard_core::{
    asset_migration, invites, jobs, legacy_import, sessions, state, storage, turns,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request is malformed (bad JSON, bad id, bad query).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// 401: no valid bearer token.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// 403: a member whose role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing, or not visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 409: a game-state update made against another version.
    #[error("{message}")]
    VersionConflict {
        /// Human-readable explanation.
        message: String,
        /// The state's version now.
        current_version: i64,
    },
    /// 422: a game-state update that cannot be applied.
    #[error("{message}")]
    InvalidUpdate {
        /// `VALIDATION_ERROR` or `STATE_TOO_LARGE`.
        code: &'static str,
        /// Which operation, if one is to blame.
        operation: Option<usize>,
        /// Human-readable explanation.
        message: String,
    },
    /// 410: existed, but is no longer usable.
    #[error("{message}")]
    Gone {
        /// Machine-readable code.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// 408: the body did not arrive within `QB_HTTP_BODY_TIMEOUT_MS`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 413: the body is larger than `QB_MAX_BODY_BYTES`.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the body is not JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 415: an upload of a type its kind does not take.
    #[error("{0}")]
    MediaTypeRefused(String),
    /// 416: the range asked for is past the end of an object of this size.
    #[error("the range is past the end of the {0} bytes")]
    RangeNotSatisfiable(u64),
    /// 422: well-formed but not acceptable.
    #[error("{0}")]
    Unprocessable(String),
    /// 503: a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 429: a member's quota or budget; the code says which kind
    /// (`rate_limited`, `queue_full`, `budget_exhausted`,
    /// `limit_reached`), `Retry-After` when to ask again.
    #[error(transparent)]
    Quota(#[from] questboard_core::quotas::Refusal),
    /// An operator's source: 422 when the request named one it may not
    /// use, 503 when the source is unwell; the code is the source's.
    #[error(transparent)]
    Source(#[from] questboard_core::sources::SourceError),
    /// 500: our fault; the cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result alias for handlers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (`unauthorized`, `not_found`, `validation_failed`, ...).
    pub code: String,
    /// Human-readable explanation, safe to show.
    pub message: String,
    /// `VERSION_CONFLICT` only: the game state's current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    /// Game-state `VALIDATION_ERROR` only: the index of the operation refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<usize>,
    /// 429 only: which quota refused (`user_turns_per_minute`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<questboard_core::quotas::Quota>,
    /// 429 only: the quota's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// 429 only: seconds until asking again may succeed (as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Error {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(AuthError::Ambiguous) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Conflict(_) | Error::VersionConflict { .. } => StatusCode::CONFLICT,
            Error::Gone { .. } => StatusCode::GONE,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType | Error::MediaTypeRefused(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Error::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Unprocessable(_) | Error::InvalidUpdate { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Source(source) if source.is_request() => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Source(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::Gone { code, .. }
            | Error::InvalidUpdate { code, .. } => code,
            Error::VersionConflict { .. } => "VERSION_CONFLICT",
            Error::Unauthorized(AuthError::Ambiguous) => "duplicate_authorization",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::Conflict(_) => "conflict",
            Error::RequestTimeout => "request_timeout",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UnsupportedMediaType | Error::MediaTypeRefused(_) => "unsupported_media_type",
            Error::RangeNotSatisfiable(_) => "range_not_satisfiable",
            Error::Unprocessable(_) => "validation_failed",
            Error::Unavailable(_) => "unavailable",
            Error::Quota(refusal) => refusal.quota.code(),
            Error::Source(source) => source.code(),
            Error::Internal(_) => "internal_error",
        }
    }

    /// The error as its JSON body shows it.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code().to_owned(),
            message: self.to_string(),
            current_version: match self {
                Error::VersionConflict {
                    current_version, ..
                } => Some(*current_version),
                _ => None,
            },
            operation: match self {
                Error::InvalidUpdate { operation, .. } => *operation,
                _ => None,
            },
            quota: match self {
                Error::Quota(r) => Some(r.quota),
                _ => None,
            },
            limit: match self {
                Error::Quota(r) => Some(r.limit),
                _ => None,
            },
            retry_after: match self {
                Error::Quota(r) => Some(r.retry_after_secs()),
                _ => None,
            },
        }
    }

    /// A 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 500 from any error; the cause is logged when the response is built.
    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Internal(Box::new(err))
    }

    /// A database failure: 503 `unavailable` when the database cannot be
    /// reached or cannot serve now ([`questboard_core::db::is_unavailable`];
    /// the client retries, a turn with the same `Idempotency-Key`), 500
    /// otherwise.
    pub fn database(err: sqlx::Error) -> Self {
        if questboard_core::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable: answering 503");
            Error::Unavailable("the database is unavailable right now; retry shortly".into())
        } else {
            Error::internal(err)
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(cause) = &self {
            tracing::error!(error = %cause, source = ?cause.source(), "request failed");
        }
        if let Error::Unauthorized(reason) = &self {
            crate::auth::count_refusal(*reason);
        }
        let status = self.status();
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Error::Quota(refusal) = &self
            && let Ok(value) = HeaderValue::from_str(&refusal.retry_after_secs().to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::database(err)
    }
}

impl From<sessions::Error> for Error {
    fn from(err: sessions::Error) -> Self {
        match err {
            sessions::Error::NotFound => Error::NotFound("session"),
            sessions::Error::NoSuchMember => Error::NotFound("member"),
            sessions::Error::Forbidden(why) => Error::Forbidden(why.into()),
            sessions::Error::Conflict(why) => Error::Conflict(why.into()),
            sessions::Error::Invalid(why) => Error::Unprocessable(why),
            sessions::Error::Quota(refusal) => Error::Quota(refusal),
            sessions::Error::Database(err) => Error::database(err),
        }
    }
}

impl From<invites::Error> for Error {
    fn from(err: invites::Error) -> Self {
        match err {
            invites::Error::NotFound => Error::NotFound("invite"),
            invites::Error::Gone(reason) => Error::Gone {
                code: reason.as_str(),
                message: err.to_string(),
            },
            invites::Error::Session(err) => err.into(),
            invites::Error::Invalid(why) => Error::Unprocessable(why),
            invites::Error::Quota(refusal) => Error::Quota(refusal),
            invites::Error::Database(err) => Error::database(err),
        }
    }
}

impl From<storage::Error> for Error {
    fn from(err: storage::Error) -> Self {
        match err {
            storage::Error::InvalidName(_) | storage::Error::ContentTypeMismatch { .. } => {
                Error::Unprocessable(err.to_string())
            }
            storage::Error::NotFound | storage::Error::Link(_) => Error::NotFound("file"),
            storage::Error::Config(_) | storage::Error::Backend(_) => Error::internal(err),
        }
    }
}

impl From<asset_migration::Error> for Error {
    fn from(err: asset_migration::Error) -> Self {
        match err {
            asset_migration::Error::Invalid(why) => Error::Unprocessable(why),
            asset_migration::Error::NotFound => Error::NotFound("migration run"),
            asset_migration::Error::Conflict(why) => Error::Conflict(why),
            asset_migration::Error::Job(err) => err.into(),
            asset_migration::Error::Database(err) => Error::database(err),
            asset_migration::Error::Source(source) => source.into(),
        }
    }
}

impl From<legacy_import::Error> for Error {
    fn from(err: legacy_import::Error) -> Self {
        match err {
            legacy_import::Error::Invalid(why) => Error::Unprocessable(why),
            legacy_import::Error::NotFound => Error::NotFound("import run"),
            legacy_import::Error::Conflict(why) => Error::Conflict(why),
            legacy_import::Error::Storage(err) => err.into(),
            legacy_import::Error::Job(err) => err.into(),
            legacy_import::Error::Database(err) => Error::database(err),
            legacy_import::Error::Source(source) => source.into(),
        }
    }
}

impl From<jobs::Error> for Error {
    fn from(err: jobs::Error) -> Self {
        match err {
            jobs::Error::Invalid(why) => Error::Unprocessable(why),
            jobs::Error::Database(err) => Error::database(err),
            jobs::Error::Payload(_) => Error::internal(err),
        }
    }
}

impl From<turns::Error> for Error {
    fn from(err: turns::Error) -> Self {
        match err {
            turns::Error::Session(err) => err.into(),
            turns::Error::Invalid(why) => Error::Unprocessable(why),
            turns::Error::Unavailable(why) => Error::Unavailable(why.into()),
            turns::Error::KeyReused => Error::Conflict(err.to_string()),
            turns::Error::Quota(refusal) => Error::Quota(refusal),
            turns::Error::Database(err) => Error::database(err),
            turns::Error::Job(err) => err.into(),
            turns::Error::Fenced(_) => Error::internal(err),
        }
    }
}

impl From<state::Error> for Error {
    fn from(err: state::Error) -> Self {
        match err {
            state::Error::Session(err) => err.into(),
            state::Error::NotGameMaster => Error::Forbidden(err.to_string()),
            state::Error::Archived | state::Error::IdReused | state::Error::Decided(_) => {
                Error::Conflict(err.to_string())
            }
            state::Error::NoSuchProposal => Error::NotFound("proposal"),
            state::Error::VersionConflict {
                current_version, ..
            } => Error::VersionConflict {
                message: err.to_string(),
                current_version,
            },
            state::Error::Invalid { index, .. } => Error::InvalidUpdate {
                code: "VALIDATION_ERROR",
                operation: index,
                message: err.to_string(),
            },
            state::Error::TooLarge { .. } => Error::InvalidUpdate {
                code: "STATE_TOO_LARGE",
                operation: None,
                message: err.to_string(),
            },
            state::Error::Database(err) => Error::database(err),
        }
    }
}
