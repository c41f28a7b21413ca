//! Credentials as a request carries them: `Authorization: Bearer <key-id>:<secret>` or the
//! `api-key` and `api-secret` headers. A key's token is `<key-id>:<secret>`.

use http::HeaderMap;

/// Longest header value read as a credential.
const MAX_LEN: usize = 600;

/// A (key id, secret) pair from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub key: &'a str,
    pub secret: &'a str,
}

/// Why a request's credentials cannot even be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing credentials: send Authorization: Bearer <api-key>:<api-secret>, or the api-key and api-secret headers")]
    Missing,
    #[error("{0}")]
    Malformed(&'static str),
}

/// The credentials an `http` header map carries (see [`presented`]).
pub fn presented_in(headers: &HeaderMap) -> Result<Presented<'_>, TokenError> {
    presented(|name| headers.get(name).map(|v| v.as_bytes()))
}

/// The credentials a request carries, given its header lookup: the `api-key` and `api-secret`
/// pair when both are there (clients such as the OpenAI SDKs always send an Authorization
/// header too), else the bearer.
pub fn presented<'a>(
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Presented<'a>, TokenError> {
    let text = |name: &str| -> Result<Option<&'a str>, TokenError> {
        match header(name) {
            None => Ok(None),
            Some(v) if v.len() > MAX_LEN => {
                Err(TokenError::Malformed("a credential header is too long"))
            }
            Some(v) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| TokenError::Malformed("a credential header is not text")),
        }
    };
    if let (Some(key), Some(secret)) = (text("api-key")?, text("api-secret")?) {
        return Ok(Presented { key, secret });
    }
    if let Some(auth) = text("authorization")? {
        let (scheme, token) = auth.split_once(' ').ok_or(TokenError::Malformed(
            "Authorization must be \"Bearer <api-key>:<api-secret>\"",
        ))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Malformed(
                "Authorization must use the Bearer scheme",
            ));
        }
        let (key, secret) = token.trim().split_once(':').ok_or(TokenError::Malformed(
            "a bearer token is \"<api-key>:<api-secret>\"",
        ))?;
        return Ok(Presented { key, secret });
    }
    match (text("api-key")?, text("api-secret")?) {
        (Some(key), Some(secret)) => Ok(Presented { key, secret }),
        (Some(_), None) => Err(TokenError::Malformed("the api-secret header is missing")),
        (None, Some(_)) => Err(TokenError::Malformed("the api-key header is missing")),
        (None, None) => Err(TokenError::Missing),
    }
}

/// A fresh random string of `len` characters of `[A-Za-z0-9]` (about 5.95 bits each).
pub fn generate_secret(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn both_forms_are_read() {
        let h = headers(&[("authorization", "Bearer igk_1:s3")]);
        assert_eq!(
            presented_in(&h).unwrap(),
            Presented {
                key: "igk_1",
                secret: "s3"
            }
        );
        let h = headers(&[("api-key", "igk_1"), ("api-secret", "s3")]);
        assert_eq!(
            presented_in(&h).unwrap(),
            Presented {
                key: "igk_1",
                secret: "s3"
            }
        );
        assert_eq!(
            presented_in(&headers(&[])).unwrap_err(),
            TokenError::Missing
        );
        assert!(presented_in(&headers(&[("authorization", "Bearer nocolon")])).is_err());
        assert!(presented_in(&headers(&[("authorization", "Basic x")])).is_err());
        assert!(presented_in(&headers(&[("api-key", "k")])).is_err());
    }

    #[test]
    fn secrets_are_random_and_alphanumeric() {
        let a = generate_secret(40);
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, generate_secret(40));
    }
}
