//! Who is asking: the user id that memberships, invites and turns are keyed by.
//!
//! The id is the JWT `sub` claim as the identity provider issued it (Auth0
//! uses `auth0|abc123`, others use UUIDs), so it is opaque text. It is still
//! bounded and free of control characters because it ends up in logs, URLs
//! and storage metadata.

use std::fmt;

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 255;

/// A validated, opaque user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

/// A user id was empty, too long or contained control characters.
#[derive(Debug, Clone, thiserror::Error)]
#[error("user id must be 1 to {MAX_USER_ID_BYTES} bytes without control characters")]
pub struct InvalidUserId;

impl UserId {
    /// Validates `raw` as a user id.
    pub fn parse(raw: &str) -> Result<Self, InvalidUserId> {
        if raw.is_empty() || raw.len() > MAX_USER_ID_BYTES || raw.chars().any(char::is_control) {
            return Err(InvalidUserId);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(MAX_USER_ID_BYTES + 1)).is_err());
        assert!(UserId::parse("alice\0").is_err());
        assert!(UserId::parse("alice\n").is_err());
        assert_eq!(
            UserId::parse("auth0|abc").map(|u| u.0).ok(),
            Some("auth0|abc".to_owned())
        );
    }
}
