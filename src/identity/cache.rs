//! The key cache: every API key, by id, in a map swapped whole when the store says keys
//! changed (on any instance, within a second). Checking a request's key reads it without a
//! lock or a store round trip.

use super::model::ApiKey;
use super::scope::Scopes;
use super::secret::{hash_secret, parse_hex32};
use super::token::Presented;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// A key as the checks need it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: Arc<str>,
    secret_sha256: [u8; 32],
    pub scopes: Scopes,
    pub roles: Vec<String>,
    pub user_id: Option<Arc<str>>,
    pub org_id: Option<Arc<str>>,
    pub expires_ms: Option<u64>,
    pub revoked: bool,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

impl KeyEntry {
    /// From a stored key; `None` when its digest is not 64 hex digits.
    pub fn from_key(k: &ApiKey) -> Option<Self> {
        Some(Self {
            id: k.id.as_str().into(),
            secret_sha256: parse_hex32(&k.secret_sha256)?,
            scopes: Scopes::parse(k.scopes.iter().map(String::as_str)).unwrap_or_default(),
            roles: k.roles.clone(),
            user_id: k.user_id.as_deref().map(Into::into),
            org_id: k.org_id.as_deref().map(Into::into),
            expires_ms: k.expires_ms,
            revoked: k.revoked_ms.is_some(),
            rpm: k.rpm,
            tpm: k.tpm,
        })
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid API key")]
    Invalid,
    #[error("the API key was revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
    /// The cache has not been confirmed by the store for longer than allowed.
    #[error("API keys cannot be checked right now (the key store has been unreachable for too long); retry later")]
    Unconfirmed,
}

/// Every key, by id.
#[derive(Default)]
pub struct KeyCache {
    map: ArcSwap<HashMap<Arc<str>, Arc<KeyEntry>>>,
    /// Unix ms of the last whole read from the store (0: never).
    confirmed_ms: std::sync::atomic::AtomicU64,
    /// How old that read may be before keys are refused (0: no limit).
    max_stale_ms: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// Refuse keys, with [`Refusal::Unconfirmed`], once the cache has not been replaced from
    /// the store for `max_stale_ms` (0: never).
    pub fn set_max_stale(&self, max_stale_ms: u64) {
        self.max_stale_ms
            .store(max_stale_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replace the whole cache with every key, just read from the store at `now_ms`.
    pub fn replace_confirmed(&self, keys: &[ApiKey], now_ms: u64) {
        self.replace(keys);
        self.confirmed_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Replace the whole cache.
    pub fn replace(&self, keys: &[ApiKey]) {
        let map = keys
            .iter()
            .filter_map(|k| {
                let e = KeyEntry::from_key(k);
                if e.is_none() {
                    tracing::warn!(key = %k.id, "stored key has a malformed digest; ignored");
                }
                e
            })
            .map(|e| (e.id.clone(), Arc::new(e)))
            .collect();
        self.map.store(Arc::new(map));
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key `p` names, when its secret matches and it is live at `now_ms`.
    pub fn verify(&self, p: Presented<'_>, now_ms: u64) -> Result<Arc<KeyEntry>, Refusal> {
        use std::sync::atomic::Ordering::Relaxed;
        let max_stale = self.max_stale_ms.load(Relaxed);
        if max_stale > 0 && now_ms.saturating_sub(self.confirmed_ms.load(Relaxed)) > max_stale {
            return Err(Refusal::Unconfirmed);
        }
        let digest = hash_secret(p.secret);
        let map = self.map.load();
        let Some(entry) = map.get(p.key) else {
            return Err(Refusal::Invalid);
        };
        if !bool::from(entry.secret_sha256.ct_eq(&digest)) {
            return Err(Refusal::Invalid);
        }
        if entry.revoked {
            return Err(Refusal::Revoked);
        }
        if entry.expires_ms.is_some_and(|t| t <= now_ms) {
            return Err(Refusal::Expired);
        }
        Ok(entry.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: None,
            secret_sha256: crate::identity::hash_secret_hex(secret),
            scopes: vec!["chat".into()],
            roles: vec![],
            user_id: Some("u1".into()),
            org_id: None,
            expires_ms: None,
            rpm: None,
            tpm: None,
            created_ms: 0,
            revoked_ms: None,
        }
    }

    #[test]
    fn verifies_secret_revocation_and_expiry() {
        let cache = KeyCache::default();
        let mut expired = key("k3", "c");
        expired.expires_ms = Some(1_000);
        let mut revoked = key("k2", "b");
        revoked.revoked_ms = Some(5);
        cache.replace(&[key("k1", "a"), revoked, expired]);
        let p = |key, secret| Presented { key, secret };
        let e = cache.verify(p("k1", "a"), 10).unwrap();
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(
            cache.verify(p("k1", "x"), 10).unwrap_err(),
            Refusal::Invalid
        );
        assert_eq!(
            cache.verify(p("nope", "a"), 10).unwrap_err(),
            Refusal::Invalid
        );
        assert_eq!(
            cache.verify(p("k2", "b"), 10).unwrap_err(),
            Refusal::Revoked
        );
        assert!(cache.verify(p("k3", "c"), 999).is_ok());
        assert_eq!(
            cache.verify(p("k3", "c"), 1_000).unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(
            cache.verify(p("k2", "x"), 10).unwrap_err(),
            Refusal::Invalid,
            "a wrong secret says nothing of revocation"
        );
    }

    #[test]
    fn a_cache_not_confirmed_for_too_long_refuses_every_key() {
        let p = |key, secret| Presented { key, secret };
        let cache = KeyCache::default();
        cache.replace_confirmed(&[key("k1", "a")], 1_000);
        assert!(cache.verify(p("k1", "a"), 5_000).is_ok(), "no limit set");
        cache.set_max_stale(2_000);
        assert!(cache.verify(p("k1", "a"), 3_000).is_ok());
        assert_eq!(
            cache.verify(p("k1", "a"), 3_001).unwrap_err(),
            Refusal::Unconfirmed
        );
        assert_eq!(
            cache.verify(p("nope", "a"), 3_001).unwrap_err(),
            Refusal::Unconfirmed
        );
        cache.replace_confirmed(&[key("k1", "a")], 3_500);
        assert!(cache.verify(p("k1", "a"), 4_000).is_ok());
    }
}
