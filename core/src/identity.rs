//! Who is asking: the user id that memberships, invites and turns are keyed by.
//!
//! The id is the JWT `sub` claim as the identity provider issued it (Auth0
//! uses `auth0|abc123`, others use UUIDs), so it is opaque text. It is still
//! bounded, not blank, and free of control, format and bidirectional
//! characters (U+202E and friends), because it ends up in logs, URLs,
//! storage metadata and on other players' screens.

use std::fmt;

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 255;

/// A validated, opaque user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

/// A user id was blank, too long or contained control, format or
/// bidirectional characters.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "user id must be 1 to {MAX_USER_ID_BYTES} bytes, not blank, without control, format or bidirectional characters"
)]
pub struct InvalidUserId;

impl UserId {
    /// Validates `raw` as a user id.
    pub fn parse(raw: &str) -> Result<Self, InvalidUserId> {
        if raw.trim().is_empty()
            || raw.len() > MAX_USER_ID_BYTES
            || raw.chars().any(|c| c.is_control() || is_format(c))
        {
            return Err(InvalidUserId);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` is an invisible format character (Unicode category Cf:
/// zero-width characters, bidirectional embeddings, overrides and
/// isolates, the byte-order mark, tags), which can make text display as
/// something it is not.
pub fn is_format(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
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
        for blank_or_hidden in [
            "   ",
            "\t",
            "\u{202e}evil",
            "ali\u{200b}ce",
            "\u{2066}x",
            "\u{feff}bob",
        ] {
            assert!(
                UserId::parse(blank_or_hidden).is_err(),
                "{blank_or_hidden:?}"
            );
        }
        assert!(
            UserId::parse("José Müller").is_ok(),
            "letters and inner spaces are fine"
        );
        assert_eq!(
            UserId::parse("auth0|abc").map(|u| u.0).ok(),
            Some("auth0|abc".to_owned())
        );
    }
}
