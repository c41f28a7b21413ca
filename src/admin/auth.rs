//! Who may call the admin API. A credential is an API key and a secret, sent either as the
//! `api-key` and `api-secret` headers or as `Authorization: Bearer <api-key>:<api-secret>`.
//! Only SHA-256 digests of secrets are kept; they are compared in constant time and never
//! logged. A fresh install is administered with `INFERGATE_ADMIN_API_KEY` and
//! `INFERGATE_ADMIN_API_SECRET` (role `ai_admin`); `[[admin.credentials]]` adds service
//! accounts with their own roles.

use super::error::ApiError;
use crate::config::AdminConfig;
pub use crate::identity::{hash_secret, hash_secret_hex};
use crate::identity::{parse_hex32, presented_in, KeyCache};
use axum::http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// The role every fleet admin endpoint requires.
pub const AI_ADMIN: &str = "ai_admin";
pub const ENV_KEY: &str = "INFERGATE_ADMIN_API_KEY";
pub const ENV_SECRET: &str = "INFERGATE_ADMIN_API_SECRET";

/// Why the credentials could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{ENV_KEY} and {ENV_SECRET} must be set together")]
    HalfPair,
    #[error("{ENV_KEY}: {0}")]
    BadKey(String),
    #[error("{ENV_SECRET} must not be empty")]
    EmptySecret,
    #[error("admin.credentials: api_key {0:?} is listed twice (or equals {ENV_KEY})")]
    Duplicate(String),
}

/// An API key must be 1 to 128 printable ASCII characters without ':' or spaces (the bearer
/// form separates key and secret with ':').
pub fn check_api_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err("must be printable ASCII without ':' or spaces".into());
    }
    Ok(())
}

struct Credential {
    secret_sha256: [u8; 32],
    roles: Vec<String>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub api_key: String,
    pub roles: Vec<String>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Every credential the admin API accepts.
pub struct Credentials {
    by_key: HashMap<String, Credential>,
}

impl Credentials {
    /// From the environment's admin pair and the config's service accounts.
    pub fn from_env_and_config(config: &AdminConfig) -> Result<Self, AuthSetupError> {
        let key = std::env::var(ENV_KEY).ok().filter(|v| !v.is_empty());
        let secret = std::env::var(ENV_SECRET).ok();
        let env_pair = match (key, secret) {
            (None, None) => None,
            (Some(k), Some(s)) => {
                check_api_key(&k).map_err(AuthSetupError::BadKey)?;
                if s.is_empty() {
                    return Err(AuthSetupError::EmptySecret);
                }
                Some((k, hash_secret(&s)))
            }
            _ => return Err(AuthSetupError::HalfPair),
        };
        let mut by_key = HashMap::new();
        if let Some((k, h)) = env_pair {
            by_key.insert(
                k,
                Credential {
                    secret_sha256: h,
                    roles: vec![AI_ADMIN.to_string()],
                },
            );
        } else {
            tracing::warn!(
                "{ENV_KEY} and {ENV_SECRET} are not set: the admin API refuses every request \
                 unless [[admin.credentials]] names an ai_admin account"
            );
        }
        for c in &config.credentials {
            // Validated as 64 hex digits when the config was loaded.
            let digest = parse_hex32(&c.secret_sha256).unwrap_or_default();
            let cred = Credential {
                secret_sha256: digest,
                roles: c.roles.clone(),
            };
            if by_key.insert(c.api_key.clone(), cred).is_some() {
                return Err(AuthSetupError::Duplicate(c.api_key.clone()));
            }
        }
        Ok(Self { by_key })
    }

    /// Who sent these headers: the environment's pair, a config account, or an API key (with
    /// its roles); a 401 when none matches.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        keys: &KeyCache,
    ) -> Result<Principal, ApiError> {
        let p = presented_in(headers).map_err(|e| unauthorized(&e.to_string()))?;
        let digest = hash_secret(p.secret);
        if let Some(c) = self.by_key.get(p.key) {
            if bool::from(c.secret_sha256.ct_eq(&digest)) {
                return Ok(Principal {
                    api_key: p.key.to_string(),
                    roles: c.roles.clone(),
                });
            }
            return Err(unauthorized("invalid credentials"));
        }
        match keys.verify(p, crate::telemetry::now_ms()) {
            Ok(k) => Ok(Principal {
                api_key: p.key.to_string(),
                roles: k.roles.clone(),
            }),
            // Not a wrong credential: the store could not confirm any for too long.
            Err(r @ crate::identity::Refusal::Unconfirmed) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                r.to_string(),
            )),
            Err(r) => Err(unauthorized(&r.to_string())),
        }
    }

    /// [`Self::authenticate`], then require `role` (403 without it).
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        keys: &KeyCache,
        role: &str,
    ) -> Result<Principal, ApiError> {
        let p = self.authenticate(headers, keys)?;
        if !p.has_role(role) {
            return Err(forbidden(role));
        }
        Ok(p)
    }
}

/// 403 for a caller without `role`.
pub fn forbidden(role: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden").detail(format!("the {role} role is required"))
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized").detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CredentialConfig;

    fn creds() -> Credentials {
        let config = AdminConfig {
            credentials: vec![
                CredentialConfig {
                    api_key: "admin".into(),
                    secret_sha256: hash_secret_hex("s3cret"),
                    roles: vec![AI_ADMIN.into()],
                },
                CredentialConfig {
                    api_key: "viewer".into(),
                    secret_sha256: hash_secret_hex("v"),
                    roles: vec!["viewer".into()],
                },
            ],
            ..AdminConfig::default()
        };
        Credentials::from_env_and_config(&config).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_and_header_pairs_authenticate() {
        let c = creds();
        let keys = KeyCache::default();
        let p = c
            .authorize(
                &headers(&[("authorization", "Bearer admin:s3cret")]),
                &keys,
                AI_ADMIN,
            )
            .unwrap();
        assert_eq!(p.api_key, "admin");
        c.authorize(
            &headers(&[("authorization", "bearer admin:s3cret")]),
            &keys,
            AI_ADMIN,
        )
        .unwrap();
        c.authorize(
            &headers(&[("api-key", "admin"), ("api-secret", "s3cret")]),
            &keys,
            AI_ADMIN,
        )
        .unwrap();
    }

    #[test]
    fn wrong_missing_and_unprivileged_credentials_are_refused() {
        let c = creds();
        let keys = KeyCache::default();
        let status = |h: HeaderMap| {
            c.authorize(&h, &keys, AI_ADMIN)
                .unwrap_err()
                .status()
                .as_u16()
        };
        assert_eq!(status(headers(&[])), 401);
        assert_eq!(
            status(headers(&[("authorization", "Bearer admin:wrong")])),
            401
        );
        assert_eq!(
            status(headers(&[("authorization", "Bearer nobody:s3cret")])),
            401
        );
        assert_eq!(status(headers(&[("authorization", "Bearer admin")])), 401);
        assert_eq!(status(headers(&[("authorization", "Basic YTpi")])), 401);
        assert_eq!(status(headers(&[("api-key", "admin")])), 401);
        assert_eq!(
            status(headers(&[("authorization", "Bearer viewer:v")])),
            403
        );
    }

    #[test]
    fn api_keys_are_checked() {
        assert!(check_api_key("ops-1").is_ok());
        assert!(check_api_key("").is_err());
        assert!(check_api_key("a:b").is_err());
        assert!(check_api_key("a b").is_err());
        assert_eq!(
            hash_secret_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
