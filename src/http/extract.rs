//! Request extractors that fail with our JSON [`Error`] instead of axum's
//! plain-text rejections, and the [`AuthUser`] extractor that every `/api`
//! handler takes first, so nothing is read or validated for an
//! unauthenticated caller.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use questboard_core::identity::UserId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::Error;
use crate::auth::AuthError;

/// The authenticated caller, from `Authorization: Bearer <JWT>`.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserId);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer_token(&parts.headers)?;
        Ok(AuthUser(state.auth.verify(token).await?))
    }
}

/// The authenticated caller, who must be an operator (the
/// `questboard:operator` permission): 401 without a valid token, 403 for
/// anyone else.
#[derive(Debug, Clone)]
pub struct Operator(pub UserId);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(Operator(
            caller_with(parts, state, crate::auth::Access::Operator).await?,
        ))
    }
}

/// The caller, if their token grants at least `access` (403 otherwise).
async fn caller_with(
    parts: &Parts,
    state: &AppState,
    access: crate::auth::Access,
) -> Result<UserId, Error> {
    use crate::auth::{OPERATOR_PERMISSION, VIEWER_PERMISSION};
    let token = bearer_token(&parts.headers)?;
    let caller = state.auth.verify_caller(token).await?;
    if caller.access < access {
        return Err(Error::Forbidden(match access {
            crate::auth::Access::Operator => {
                format!("this route needs the {OPERATOR_PERMISSION} permission")
            }
            _ => format!(
                "this route needs the {VIEWER_PERMISSION} or {OPERATOR_PERMISSION} permission"
            ),
        }));
    }
    Ok(caller.user)
}

/// The authenticated caller, who must be a viewer or an operator (the
/// `questboard:viewer` or `questboard:operator` permission), for the
/// operators' routes that only read: 401 without a valid token, 403 for
/// anyone else.
#[derive(Debug, Clone)]
pub struct Viewer(pub UserId);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(Viewer(
            caller_with(parts, state, crate::auth::Access::Viewer).await?,
        ))
    }
}

/// The authenticated caller with their permissions, for routes that show
/// operators more than members.
#[derive(Debug, Clone)]
pub struct AuthCaller(pub crate::auth::Caller);

impl FromRequestParts<AppState> for AuthCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer_token(&parts.headers)?;
        Ok(AuthCaller(state.auth.verify_caller(token).await?))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, AuthError> {
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(AuthError::Ambiguous);
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// A JSON body (request) or JSON response with our error handling.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    /// Every body questboard takes is a JSON object: an array is refused
    /// (422) even where serde would read it as a struct's fields in order.
    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(0);
        if !is_json(req.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge(limit),
                r if timed_out(&r) => Error::RequestTimeout,
                r => Error::bad_request("bad_body", r.body_text()),
            })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(Error::Unprocessable(
                "the body must be a JSON object, not an array".into(),
            ));
        }
        if let Some(key) = duplicate_key(&bytes) {
            return Err(Error::Unprocessable(describe(&format!(
                "duplicate key {key:?}: each key may appear once in an object"
            ))));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection, limit)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The first key that appears twice in one object of the JSON text
/// `bytes`, at any depth. serde would silently keep the last of the two
/// in a free-form value (and refuse them only for a struct's fields), so
/// the same body could mean different things to different readers: REST
/// bodies and socket messages are refused when this finds one. Text that
/// is not JSON gives None (its parser reports that).
pub fn duplicate_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{self, Deserializer as _, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::collections::HashSet;

    struct Unique;
    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Unique, A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if !seen.insert(key.clone()) {
                    return Err(de::Error::custom(DuplicateKey(key.into_owned())));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> std::result::Result<Unique, E> {
            Ok(Unique)
        }
    }
    /// Marks the custom error as ours, with the key.
    struct DuplicateKey(String);
    impl std::fmt::Display for DuplicateKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "\u{0}duplicate\u{0}{}", self.0)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let err = (&mut deserializer).deserialize_any(Unique).err()?;
    // serde_json appends " at line L column C" to a custom message.
    let text = err.to_string();
    let rest = text.strip_prefix("\u{0}duplicate\u{0}")?;
    let key = rest.rsplit_once(" at line ").map_or(rest, |(key, _)| key);
    Some(key.to_owned())
}

/// The configured body limit, put in request extensions by the router so
/// the 413 message can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

fn json_rejection(rejection: JsonRejection, limit: usize) -> Error {
    match rejection {
        JsonRejection::JsonDataError(err) => Error::Unprocessable(describe(&err.body_text())),
        JsonRejection::JsonSyntaxError(err) => {
            Error::bad_request("malformed_json", describe(&err.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => Error::UnsupportedMediaType,
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge(limit),
        other if timed_out(&other) => Error::RequestTimeout,
        other => Error::bad_request("bad_body", other.body_text()),
    }
}

/// The page size a list route was asked for: `limit` in 1 to 100, or
/// `default` when absent; 400 otherwise.
pub fn page_limit(limit: Option<i64>, default: i64) -> Result<i64, Error> {
    match limit {
        None => Ok(default),
        Some(n @ 1..=100) => Ok(n),
        Some(_) => Err(Error::bad_request(
            "invalid_query",
            "limit must be 1 to 100",
        )),
    }
}

/// Deserializes a field that may be absent (with `#[serde(default)]`) but
/// not null: `null` is refused like any other value of the wrong type, as
/// the description (not nullable) says.
pub fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    match <Option<T> as serde::Deserialize>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "null is not allowed here: leave the field out instead",
        )),
    }
}

/// Deserializes an optional whole number given as JSON `82` or `82.0`:
/// JSON Schema's `integer` (what the OpenAPI description says) admits
/// both, serde's integers only the first. `82.5` is refused.
pub fn whole_number<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let out_of_range = || D::Error::custom("the number is out of range");
    let whole = match number.as_i64() {
        Some(whole) => whole,
        None if number.is_u64() => return Err(out_of_range()),
        None => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            if float.fract() != 0.0 || !float.is_finite() {
                return Err(D::Error::custom("expected a whole number"));
            }
            if float.abs() > 9_007_199_254_740_992.0 {
                return Err(out_of_range());
            }
            float as i64
        }
    };
    T::try_from(whole).map(Some).map_err(|_| out_of_range())
}

/// The request's `Idempotency-Key`, if it sent one: 1 to 255 visible ASCII
/// characters, else 400 `invalid_idempotency_key`.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<&str>, Error> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| {
        Error::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be visible ASCII",
        )
    })?;
    questboard_core::turns::validate_idempotency_key(key)
        .map_err(|e| Error::bad_request("invalid_idempotency_key", e.to_string()))?;
    Ok(Some(key))
}

/// Like [`whole_number`], for a field that must be present and not null.
pub fn required_whole_number<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error as _;
    whole_number(deserializer)?.ok_or_else(|| D::Error::custom("expected a whole number"))
}

/// Whether the request says its body is JSON: `application/json`, or a
/// `+json` type (`application/merge-patch+json`), as axum's `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

/// Whether reading the body failed because it did not arrive within the
/// body timeout (`server::Limits::body_timeout`).
pub(super) fn timed_out(rejection: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Path parameters with our error handling: an id that is not a UUID is a
/// 400; a parameter with a control character (`%00`, ...) names nothing
/// there is, a 404 (and never reaches Postgres, whose text holds no NUL).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => {
                let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
                    .await
                    .map_err(|_| Error::bad_request("invalid_path", "the path is not UTF-8"))?;
                if raw.iter().any(|(_, v)| v.chars().any(char::is_control)) {
                    return Err(Error::NotFound("resource"));
                }
                Ok(Path(value))
            }
            Err(PathRejection::FailedToDeserializePathParams(err)) => Err(Error::bad_request(
                "invalid_path",
                describe(&err.body_text()),
            )),
            Err(other) => Err(Error::internal(other)),
        }
    }
}

/// Query parameters with our error handling.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => {
                Err(Error::bad_request("invalid_query", err.body_text()))
            }
            Err(other) => Err(Error::bad_request("invalid_query", other.body_text())),
        }
    }
}

/// Most characters of client input a message quotes back.
pub const MAX_ECHO_CHARS: usize = 64;

/// A rejection's text made safe to show: the input it quotes is cut to
/// [`MAX_ECHO_CHARS`] characters, and Rust type names ("expected struct
/// SessionInput") become the JSON they stand for ("expected an object").
pub fn describe(text: &str) -> String {
    let text = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(text)
        .replace("a sequence", "an array")
        .replace("a map", "an object")
        .replace("type: sequence", "type: array")
        .replace("type: map", "type: object");
    let mut out = String::with_capacity(text.len().min(512));
    let mut words = text.split(' ').peekable();
    let mut first = true;
    while let Some(word) = words.next() {
        if !first {
            out.push(' ');
        }
        first = false;
        if matches!(word, "struct" | "enum" | "tuple" | "unit") {
            // "expected struct Name": drop the name, say what JSON it is.
            let name = words.next().unwrap_or_default();
            let rest = name.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
            out.push_str(match word {
                "struct" => "an object",
                "enum" => "one of the documented values",
                _ => "a value of the documented shape",
            });
            out.push_str(rest);
            continue;
        }
        out.push_str(word);
    }
    cap_quoted(&out)
}

/// Cuts every quoted or backticked run, and the whole text, to a bounded
/// length.
fn cap_quoted(text: &str) -> String {
    let mut out = String::new();
    let mut inside: Option<char> = None;
    let mut run = 0usize;
    for c in text.chars() {
        match inside {
            Some(q) if c == q => {
                inside = None;
                out.push(c);
            }
            Some(_) => {
                run += 1;
                if run <= MAX_ECHO_CHARS {
                    out.push(c);
                } else if run == MAX_ECHO_CHARS + 1 {
                    out.push_str("...");
                }
            }
            None => {
                if c == '"' || c == '`' {
                    inside = Some(c);
                    run = 0;
                }
                out.push(c);
            }
        }
        if out.chars().count() > 4 * MAX_ECHO_CHARS + 200 {
            out.push_str("...");
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_json_not_rust_and_echo_little() {
        let shaped = describe(
            "Failed to deserialize the JSON body into the target type: invalid type: string \"x\", expected struct SessionInput at line 1 column 3",
        );
        assert_eq!(
            shaped,
            "invalid type: string \"x\", expected an object at line 1 column 3"
        );
        assert!(describe("expected a sequence").ends_with("an array"));
        assert_eq!(
            describe("invalid type: sequence, expected a string"),
            "invalid type: array, expected a string"
        );
        let long = format!("Cannot parse `{}` to a UUID", "a".repeat(10_000));
        let cut = describe(&long);
        assert!(cut.len() < 200, "{cut}");
        assert!(
            cut.contains(&format!("`{}...`", "a".repeat(MAX_ECHO_CHARS))),
            "{cut}"
        );
    }
}

#[cfg(test)]
mod whole_number_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    #[derive(Debug, serde::Deserialize)]
    struct V {
        #[serde(deserialize_with = "super::required_whole_number")]
        version: i64,
    }

    #[test]
    fn whole_floats_below_2_53_are_whole_numbers() {
        for (text, want) in [
            ("{\"version\": 3745233398638750.0}", 3_745_233_398_638_750),
            ("{\"version\": 82.0}", 82),
            ("{\"version\": 82}", 82),
        ] {
            let direct: V = serde_json::from_str(text).expect(text);
            assert_eq!(direct.version, want);
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let via_value: V = serde_json::from_value(value).expect(text);
            assert_eq!(via_value.version, want);
        }
        assert!(serde_json::from_str::<V>("{\"version\": 82.5}").is_err());
    }

    #[test]
    fn numbers_past_i64_or_2_53_are_out_of_range() {
        for text in ["{\"version\": 9223372036854775808}", "{\"version\": 1e300}"] {
            let err = serde_json::from_str::<V>(text).expect_err(text);
            assert!(err.to_string().contains("out of range"), "{text}: {err}");
        }
    }
}
