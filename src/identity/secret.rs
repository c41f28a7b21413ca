//! Secrets at rest: only their SHA-256 is kept (as 32 bytes, or 64 hex digits in stored
//! documents and the config).

use sha2::{Digest, Sha256};

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The same, as 64 hex digits.
pub fn hash_secret_hex(secret: &str) -> String {
    hash_secret(secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 64 hex digits back to the digest (`None` when they are not).
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
