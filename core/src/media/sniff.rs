//! Whether a body's bytes are what its declared content type says, checked
//! as the body streams past: binary types by their magic bytes (the
//! `infer` crate's matchers), markdown by being UTF-8 text without NUL
//! from the first byte to the last. A disguised file (an executable called
//! `image/png`, a PNG called `text/markdown`) is refused before anything is
//! recorded.

use super::{Error, Result};

/// Bytes kept from the start of a body for the magic-byte check.
const HEAD_BYTES: usize = 64;

/// Checks one body against its declared type, chunk by chunk.
#[derive(Debug)]
pub struct Sniffer {
    declared: String,
    check: Check,
    head: Vec<u8>,
    head_checked: bool,
    /// The bytes of a UTF-8 character cut by a chunk boundary.
    carry: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Magic(fn(&[u8]) -> bool),
    Text,
}

impl Sniffer {
    /// A checker for a body declared as `content_type` (parameters
    /// ignored); None if questboard has no check for the type, which
    /// then must not be stored.
    pub fn new(content_type: &str) -> Option<Self> {
        let declared = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let check = match declared.as_str() {
            "image/png" => Check::Magic(infer::image::is_png),
            "image/jpeg" => Check::Magic(infer::image::is_jpeg),
            "image/webp" => Check::Magic(infer::image::is_webp),
            "application/pdf" => Check::Magic(infer::archive::is_pdf),
            "audio/wav" => Check::Magic(infer::audio::is_wav),
            "audio/mpeg" => Check::Magic(infer::audio::is_mp3),
            "audio/ogg" | "audio/opus" => Check::Magic(infer::audio::is_ogg),
            "audio/flac" => Check::Magic(infer::audio::is_flac),
            "text/markdown" => Check::Text,
            _ => return None,
        };
        Some(Self {
            declared,
            check,
            head: Vec::with_capacity(HEAD_BYTES),
            head_checked: false,
            carry: Vec::new(),
        })
    }

    /// Takes the next chunk of the body; refuses as soon as the bytes
    /// cannot be the declared type.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        if !self.head_checked {
            let wanted = HEAD_BYTES - self.head.len();
            self.head
                .extend_from_slice(&chunk[..chunk.len().min(wanted)]);
            if self.head.len() >= HEAD_BYTES {
                self.check_head()?;
            }
        }
        if let Check::Text = self.check {
            self.check_text(chunk)?;
        }
        Ok(())
    }

    /// The end of the body.
    pub fn finish(mut self) -> Result<()> {
        if !self.head_checked {
            self.check_head()?;
        }
        if matches!(self.check, Check::Text) && !self.carry.is_empty() {
            return Err(self.disguised("is not UTF-8 text (it ends inside a character)"));
        }
        Ok(())
    }

    fn check_head(&mut self) -> Result<()> {
        self.head_checked = true;
        match self.check {
            Check::Magic(is) if !is(&self.head) => {
                Err(self.disguised("does not start as one does"))
            }
            Check::Text if self.head.is_empty() => Err(self.disguised("is empty")),
            _ => Ok(()),
        }
    }

    fn check_text(&mut self, chunk: &[u8]) -> Result<()> {
        let joined;
        let bytes: &[u8] = if self.carry.is_empty() {
            chunk
        } else {
            joined = [std::mem::take(&mut self.carry).as_slice(), chunk].concat();
            &joined
        };
        let valid = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            // A character cut by the chunk's end: keep its bytes.
            Err(e) if e.error_len().is_none() => {
                self.carry = bytes[e.valid_up_to()..].to_vec();
                // Safe: the prefix is valid UTF-8 by the error's account.
                std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => return Err(self.disguised("is not UTF-8 text")),
        };
        if valid.contains('\0') {
            return Err(self.disguised("holds NUL bytes, which text does not"));
        }
        Ok(())
    }

    fn disguised(&self, why: &str) -> Error {
        Error::Disguised(format!("the body is declared {} but {why}", self.declared))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

    fn sniff(content_type: &str, chunks: &[&[u8]]) -> Result<()> {
        let mut sniffer = Sniffer::new(content_type).expect("a checked type");
        for chunk in chunks {
            sniffer.feed(chunk)?;
        }
        sniffer.finish()
    }

    #[test]
    fn magic_bytes_must_match_in_any_chunking() {
        assert!(sniff("image/png", &[PNG]).is_ok());
        assert!(sniff("image/png", &[&PNG[..3], &PNG[3..]]).is_ok());
        assert!(sniff("image/jpeg", &[PNG]).is_err());
        assert!(sniff("image/png", &[b"MZ\x90\0 an executable"]).is_err());
        assert!(sniff("application/pdf", &[b"%PDF-1.7\n..."]).is_ok());
        assert!(sniff("application/pdf", &[b"<html>"]).is_err());
        assert!(sniff("image/png", &[]).is_err());
    }

    #[test]
    fn markdown_is_utf8_text_across_chunk_boundaries() {
        let text = "# Sess\u{e9}on notes \u{1f409}\n".repeat(10);
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            assert!(
                sniff("text/markdown", &[&bytes[..cut], &bytes[cut..]]).is_ok(),
                "cut at {cut}"
            );
        }
        assert!(sniff("text/markdown", &[PNG]).is_err());
        assert!(sniff("text/markdown", &[b"ok\0no"]).is_err());
        assert!(sniff("text/markdown", &[b"ends inside \xe2\x82"]).is_err());
        assert!(sniff("text/markdown", &[]).is_err());
    }

    #[test]
    fn unknown_types_have_no_checker() {
        assert!(Sniffer::new("text/html").is_none());
        assert!(Sniffer::new("application/octet-stream").is_none());
        assert!(Sniffer::new("IMAGE/PNG; x=y").is_some());
    }
}
