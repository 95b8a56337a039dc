//! Short-lived links to one media object, for what cannot send a bearer
//! token (`<img src>`, `<audio src>`). On S3 and GCS the link is the
//! store's own presigned URL ([`crate::storage::Storage::presigned_get`]);
//! elsewhere it is questboard's URL of the object with `expires` (Unix
//! seconds) and `signature`, an HMAC-SHA256 over the path and the expiry:
//! valid for that one object, only until it expires, and any change to the
//! path, the expiry or the signature makes it worthless.

use hmac::Mac as _;
use sha2::{Digest as _, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Signs and checks links with one key. Every API process of a deployment
/// must hold the same key for a link made by one to work on another.
#[derive(Clone)]
pub struct LinkSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(..)")
    }
}

impl LinkSigner {
    /// A signer whose key is derived from `secret` (with a label, so the
    /// same secret used elsewhere, such as for JWTs, yields another key).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"questboard media links v1\0");
        hasher.update(secret);
        Self {
            key: hasher.finalize().into(),
        }
    }

    /// A signer with a random key (links work only on this process).
    pub fn random() -> Self {
        Self {
            key: rand::random(),
        }
    }

    fn mac(&self, path: &str, expires: i64) -> HmacSha256 {
        // A key of any length is accepted by HMAC.
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"GET\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The signature of a link to `path` valid until `expires`, hex.
    pub fn sign(&self, path: &str, expires: i64) -> String {
        hex::encode(self.mac(path, expires).finalize().into_bytes())
    }

    /// Whether `signature` signs `path` until `expires`, and `expires` is
    /// not past at `now` (compared in constant time). Only the form
    /// [`LinkSigner::sign`] makes is accepted: `expires` a plain decimal
    /// (no sign, no leading zero) and `signature` 64 lowercase hex digits,
    /// so one link has exactly one spelling.
    pub fn verify(&self, path: &str, expires: &str, signature: &str, now: i64) -> bool {
        let Some(expires) = canonical_expiry(expires) else {
            return false;
        };
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if expires < now || signature.len() != 64 || !signature.bytes().all(lower_hex) {
            return false;
        }
        let Some(bytes) = (0..32)
            .map(|i| u8::from_str_radix(signature.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        self.mac(path, expires).verify_slice(&bytes).is_ok()
    }
}

/// `text` as an expiry if it is written the one way [`LinkSigner::sign`]'s
/// links write it: decimal digits, no sign, no leading zero.
fn canonical_expiry(text: &str) -> Option<i64> {
    let canonical = !text.is_empty()
        && text.len() <= 18
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_link_is_for_one_path_until_it_expires() {
        let signer = LinkSigner::from_secret(b"secret");
        let path = "/api/media/s/maps/a.png";
        let sig = signer.sign(path, 1_000);
        assert!(signer.verify(path, "1000", &sig, 999));
        assert!(signer.verify(path, "1000", &sig, 1_000));
        assert!(!signer.verify(path, "1000", &sig, 1_001), "expired");
        assert!(
            !signer.verify("/api/media/s/maps/b.png", "1000", &sig, 0),
            "another object"
        );
        // One spelling only: no uppercase hex, no sign before a byte or
        // the expiry, no leading zero.
        let plus: String = sig
            .as_bytes()
            .chunks(2)
            .map(|c| format!("+{}", String::from_utf8_lossy(&c[..1])))
            .collect();
        for (expires, signature) in [
            ("1000", sig.to_uppercase()),
            ("1000", plus),
            ("+1000", sig.clone()),
            ("01000", sig.clone()),
            (" 1000", sig.clone()),
            ("1000.0", sig.clone()),
            ("", sig.clone()),
        ] {
            assert!(
                !signer.verify(path, expires, &signature, 0),
                "{expires:?} {signature}"
            );
        }
        assert!(!signer.verify(path, "2000", &sig, 0), "a longer expiry");
        let mut tampered = sig.clone();
        tampered.replace_range(0..1, if &sig[0..1] == "0" { "1" } else { "0" });
        assert!(!signer.verify(path, "1000", &tampered, 0));
        assert!(!signer.verify(path, "1000", "zz", 0));
        assert!(
            !LinkSigner::from_secret(b"other").verify(path, "1000", &sig, 0),
            "another key"
        );
    }
}
