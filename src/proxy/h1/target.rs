//! The request target (RFC 9112 3.2) split into path and query by its form: origin-form
//! (`/path?query`), absolute-form (`http://authority/path?query`, only with an `http` or
//! `https` scheme, in any case) and asterisk-form (`*`, only with OPTIONS). Anything else,
//! authority-form (CONNECT) included, is refused: a path is never found inside a target of
//! another shape (`/a/x://y/v1/chat/completions` is the path it reads as, not
//! `/v1/chat/completions`).

use http::Method;
use std::ops::Range;

/// Where the path and the query (after `?`) are in a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Empty for an absolute-form target without a path (that path is `/`).
    pub path: Range<usize>,
    pub query: Option<Range<usize>>,
}

/// Why a request target was refused (answered with a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target must be a path (`/...`), an http(s) URL, or `*` with OPTIONS")]
    Form,
    #[error("the request target `*` is only valid with OPTIONS")]
    Asterisk,
    #[error("an absolute request target needs a host")]
    NoHost,
    #[error("the host or port of an absolute request target is malformed")]
    BadAuthority,
    #[error("a request target cannot carry user information (`user@host`)")]
    UserInfo,
    #[error("a request target cannot carry a fragment (`#`)")]
    Fragment,
    #[error("a request target must be ASCII (percent-encode other characters)")]
    NotAscii,
}

/// Split `target` (the bytes httparse accepted: no whitespace or controls) by its form.
pub fn split(method: &Method, target: &str) -> Result<Target, TargetError> {
    let bytes = target.as_bytes();
    if !bytes.is_ascii() {
        return Err(TargetError::NotAscii);
    }
    if memchr::memchr(b'#', bytes).is_some() {
        return Err(TargetError::Fragment);
    }
    let path_start = match bytes.first() {
        Some(b'/') => 0,
        Some(b'*') if bytes.len() == 1 => {
            if *method != Method::OPTIONS {
                return Err(TargetError::Asterisk);
            }
            return Ok(Target {
                path: 0..1,
                query: None,
            });
        }
        _ => {
            let authority_start = scheme_length(bytes).ok_or(TargetError::Form)?;
            let authority_end = bytes[authority_start..]
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .map_or(bytes.len(), |p| authority_start + p);
            check_authority(&bytes[authority_start..authority_end])?;
            authority_end
        }
    };
    let path_end =
        memchr::memchr(b'?', &bytes[path_start..]).map_or(bytes.len(), |p| path_start + p);
    Ok(Target {
        path: path_start..path_end,
        query: (path_end < bytes.len()).then(|| path_end + 1..bytes.len()),
    })
}

/// An authority is `host[:port]` (RFC 3986 3.2, RFC 9110 4.2): a registered name or IPv4
/// address (unreserved and sub-delimiter characters, percent-encoded bytes) or an IPv6 literal
/// in brackets, and a port of at most 65535. The gateway routes by path and body and never uses
/// it, but a target a server would read differently is refused rather than passed over.
fn check_authority(authority: &[u8]) -> Result<(), TargetError> {
    if memchr::memchr(b'@', authority).is_some() {
        return Err(TargetError::UserInfo);
    }
    let (host_ok, host_len, rest) = match authority.first() {
        Some(b'[') => {
            let close = memchr::memchr(b']', authority).ok_or(TargetError::BadAuthority)?;
            let literal = &authority[1..close];
            let ok = !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            (ok, close + 1, &authority[close + 1..])
        }
        _ => {
            let end = memchr::memchr(b':', authority).unwrap_or(authority.len());
            let host = &authority[..end];
            (reg_name(host), end, &authority[end..])
        }
    };
    if host_len == 0 {
        return Err(TargetError::NoHost);
    }
    let port_ok = match rest.split_first() {
        None => true,
        // Digits only (`parse` would take a sign), empty allowed (RFC 3986 3.2.3).
        Some((b':', port)) => {
            port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        Some(_) => false,
    };
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(TargetError::BadAuthority)
    }
}

/// A registered name or IPv4 address: unreserved and sub-delimiter characters, and `%` with
/// two hexadecimal digits.
fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// The length of an `http://` or `https://` prefix (any case), if `target` starts with one.
fn scheme_length(target: &[u8]) -> Option<usize> {
    [&b"http://"[..], b"https://"]
        .into_iter()
        .find_map(|scheme| {
            let prefix = target.get(..scheme.len())?;
            prefix.eq_ignore_ascii_case(scheme).then_some(scheme.len())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (path, query) of a target, as text.
    fn parts(method: &Method, target: &str) -> Result<(String, Option<String>), TargetError> {
        let t = split(method, target)?;
        Ok((
            target[t.path].to_string(),
            t.query.map(|q| target[q].to_string()),
        ))
    }

    fn ok(target: &str, path: &str, query: Option<&str>) {
        assert_eq!(
            parts(&Method::POST, target),
            Ok((path.to_string(), query.map(str::to_string))),
            "{target}"
        );
    }

    #[test]
    fn origin_form_is_the_path_as_written() {
        ok("/v1/chat/completions", "/v1/chat/completions", None);
        ok("/v1/models?x=1&y", "/v1/models", Some("x=1&y"));
        ok("/?", "/", Some(""));
        // `://` in the path or the query is just characters of an origin-form target.
        ok(
            "/public/x://y/v1/chat/completions",
            "/public/x://y/v1/chat/completions",
            None,
        );
        ok(
            "/v1/chat/completions?next=http://evil/v1/x",
            "/v1/chat/completions",
            Some("next=http://evil/v1/x"),
        );
    }

    #[test]
    fn absolute_form_needs_an_http_scheme_and_a_host() {
        ok(
            "http://gw:8080/v1/chat/completions",
            "/v1/chat/completions",
            None,
        );
        ok(
            "HTTP://GW/v1/chat/completions",
            "/v1/chat/completions",
            None,
        );
        ok(
            "hTtPs://gw/v1/embeddings?a=b",
            "/v1/embeddings",
            Some("a=b"),
        );
        ok("http://gw", "", None);
        ok("http://gw:/v1/models", "/v1/models", None);
        ok("http://gw:65535/v1/models", "/v1/models", None);
        ok("http://10.0.0.1:80/v1/models", "/v1/models", None);
        ok("http://[::1]:8080/v1/models", "/v1/models", None);
        ok("http://[::ffff:10.0.0.1]/v1/models", "/v1/models", None);
        ok("http://my-gw.example_1%41~/v1/models", "/v1/models", None);
        ok("http://gw?q=1", "", Some("q=1"));
        ok("http://gw/x?u=https://a/b", "/x", Some("u=https://a/b"));
        for (bad, err) in [
            ("x://y/v1/chat/completions", TargetError::Form),
            ("ftp://gw/v1/chat/completions", TargetError::Form),
            ("httpx://gw/v1/chat/completions", TargetError::Form),
            ("http:/gw/v1/chat/completions", TargetError::Form),
            ("v1/chat/completions", TargetError::Form),
            ("gw:443", TargetError::Form),
            ("http:///v1/chat/completions", TargetError::NoHost),
            ("https://?x", TargetError::NoHost),
            ("http://user:pw@gw/v1/models", TargetError::UserInfo),
            ("http://:80/v1/models", TargetError::NoHost),
            (
                "http://gw:99999999999999/v1/models",
                TargetError::BadAuthority,
            ),
            ("http://gw:65536/v1/models", TargetError::BadAuthority),
            ("http://gw:8x/v1/models", TargetError::BadAuthority),
            ("http://[::1/v1/models", TargetError::BadAuthority),
            ("http://[]/v1/models", TargetError::BadAuthority),
            ("http://[::1]x/v1/models", TargetError::BadAuthority),
            ("http://g\"w/v1/models", TargetError::BadAuthority),
            ("http://g%zzw/v1/models", TargetError::BadAuthority),
            ("http://g%4/v1/models", TargetError::BadAuthority),
            ("/v1/models#frag", TargetError::Fragment),
            ("/v1/mod\u{e9}ls", TargetError::NotAscii),
        ] {
            assert_eq!(split(&Method::POST, bad), Err(err), "{bad}");
        }
    }

    #[test]
    fn asterisk_form_only_with_options() {
        assert_eq!(parts(&Method::OPTIONS, "*"), Ok(("*".to_string(), None)));
        for m in [Method::GET, Method::POST, Method::HEAD] {
            assert_eq!(split(&m, "*"), Err(TargetError::Asterisk), "{m}");
        }
        assert_eq!(split(&Method::OPTIONS, "*x"), Err(TargetError::Form));
        assert_eq!(split(&Method::OPTIONS, "**"), Err(TargetError::Form));
    }
}
