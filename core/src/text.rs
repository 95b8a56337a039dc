//! What text members show each other may contain: session names and turn
//! text. Each rule is one regular expression, used both to check the text
//! and, as a `pattern`, in the OpenAPI description, so what the server
//! accepts and what the description promises cannot disagree.
//!
//! The expressions use only `\uXXXX` escapes inside character classes,
//! which Rust's `regex`, ECMA-262 (JSON Schema) and Python read alike.

use std::sync::LazyLock;

use regex::Regex;

/// Characters no name contains: C0 and C1 controls, DEL, and the
/// bidirectional embeddings, overrides and isolates (which make text
/// display as something else).
const NAME_FORBIDDEN: &str = r"\u0000-\u001F\u007F-\u009F\u202A-\u202E\u2066-\u2069";

/// Characters that show nothing: white space and (Basic Multilingual
/// Plane) format characters such as zero-width spaces.
const INVISIBLE: &str = r"\u0020\u00A0\u1680\u2000-\u200F\u2028\u2029\u202F\u205F-\u2064\u206A-\u206F\u3000\u00AD\u0600-\u0605\u061C\u06DD\u070F\u0890\u0891\u08E2\u180E\uFEFF\uFFF9-\uFFFB";

/// Characters no turn text contains: controls other than tab, line feed
/// and carriage return.
const TEXT_FORBIDDEN: &str = r"\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F";

/// White space a turn text may hold besides something visible.
const TEXT_SPACE: &str =
    r"\u0009\u000A\u000D\u0020\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// A session name: at least one visible character, no control characters,
/// no bidirectional overrides or isolates. (Surrounding white space is
/// trimmed when stored.)
pub static NAME_PATTERN: LazyLock<String> = LazyLock::new(|| {
    format!("^[^{NAME_FORBIDDEN}]*[^{NAME_FORBIDDEN}{INVISIBLE}][^{NAME_FORBIDDEN}]*$")
});

/// A turn's text: at least one character that is not white space, no
/// control characters but tab, line feed and carriage return.
pub static TEXT_PATTERN: LazyLock<String> = LazyLock::new(|| {
    format!("^[^{TEXT_FORBIDDEN}]*[^{TEXT_FORBIDDEN}{TEXT_SPACE}][^{TEXT_FORBIDDEN}]*$")
});

#[allow(clippy::expect_used)] // constant patterns, covered by the tests below
static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&NAME_PATTERN).expect("NAME_PATTERN is a valid expression"));

#[allow(clippy::expect_used)] // constant patterns, covered by the tests below
static TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&TEXT_PATTERN).expect("TEXT_PATTERN is a valid expression"));

/// Whether `name` follows [`NAME_PATTERN`].
pub fn is_name(name: &str) -> bool {
    NAME.is_match(name)
}

/// Whether `c` is a bidirectional embedding, override or isolate (U+202A
/// to U+202E, U+2066 to U+2069), which make text display other than it
/// reads.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Why `name` does not follow [`NAME_PATTERN`], in words that complete
/// "name ..."; None if it does.
pub fn name_refusal(name: &str) -> Option<&'static str> {
    if is_name(name) {
        return None;
    }
    Some(if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else if name.chars().any(is_bidi_control) {
        "must not contain bidirectional overrides or isolates"
    } else if name.trim().is_empty() {
        "must not be empty"
    } else {
        "must have at least one visible character"
    })
}

/// Whether `text` follows [`TEXT_PATTERN`].
pub fn is_text(text: &str) -> bool {
    TEXT.is_match(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names() {
        for good in [
            "The Sunken Keep",
            "  Keep ",
            "Ünïcødé ☃",
            "👨\u{200d}👩",
            "a\u{200b}b",
            "عربي",
        ] {
            assert!(is_name(good), "{good:?}");
        }
        for bad in [
            "",
            "   ",
            "\u{200b}\u{200b}",
            "\u{202e}evil",
            "a\u{7}b",
            "tab\there",
            "\u{94}x",
            "a\u{2066}b",
            "\u{feff}",
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn texts() {
        for good in [
            "I light a torch.",
            "line one\nline two\r\n",
            "\tindented",
            "\u{202e}quoted",
        ] {
            assert!(is_text(good), "{good:?}");
        }
        for bad in ["", " \n\t\r", "a\0b", "bell\u{7}", "\u{85}x", "del\u{7f}"] {
            assert!(!is_text(bad), "{bad:?}");
        }
    }

    proptest! {
        /// The name rule in words, against the expression.
        #[test]
        fn the_name_pattern_is_the_rule(name in "\\PC{0,12}|[\\x00-\\x{3000}]{0,6}") {
            let forbidden = |c: char| c.is_control() || is_bidi_control(c);
            let visible = |c: char| !c.is_whitespace() && !crate::identity::is_format(c) && !forbidden(c);
            let rule = !name.chars().any(forbidden) && name.chars().any(visible);
            prop_assert_eq!(is_name(&name), rule, "{:?}", name);
        }

        /// The text rule in words, against the expression.
        #[test]
        fn the_text_pattern_is_the_rule(text in "\\PC{0,12}|[\\x00-\\x{3000}]{0,6}") {
            let forbidden = |c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r');
            let rule = !text.chars().any(forbidden) && !text.trim().is_empty();
            prop_assert_eq!(is_text(&text), rule, "{:?}", text);
        }
    }
}
