//! A client's request head, parsed once with `httparse` into offsets over its own copy of the
//! bytes (no header map is built: the few headers the gateway reads are found by a scan).

use super::fields::{self, Codings};
use super::target::{self, TargetError};
use http::Method;
use std::ops::Range;

/// Most header fields in a request.
pub const MAX_HEADERS: usize = 128;

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(u64),
    Chunked,
}

/// Why a request head was refused (answered with a 400 or 431, then the connection closes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("invalid request target: {0}")]
    Target(#[from] TargetError),
    #[error("the request head is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request head has more than {MAX_HEADERS} header fields")]
    TooManyFields,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("unsupported Transfer-Encoding (only a single chunked coding, on HTTP/1.1)")]
    BadTransferEncoding,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) | HeadError::TooManyFields => 431,
            _ => 400,
        }
    }
}

/// A parsed request head.
#[derive(Default)]
pub struct RequestHead {
    raw: Vec<u8>,
    method: Option<Method>,
    /// The request target as text (checked once), and where its path and query are in it.
    target: String,
    path: Range<usize>,
    query: Option<Range<usize>>,
    pub http11: bool,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Values of `Connection` fields.
    connection: Vec<Range<usize>>,
    pub framing: Option<BodyFraming>,
    /// The client asked to close (or, on HTTP/1.0, did not ask to keep alive).
    pub close: bool,
    pub expects_continue: bool,
}

/// Outcome of parsing a buffer.
pub enum Parsed {
    /// The head is complete and took this many bytes of the buffer.
    Complete(usize),
    Partial,
}

impl RequestHead {
    /// Parse the head at the start of `buf` into `self` (reusing its allocations).
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parsed, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        };
        let at = |s: &[u8]| fields::offsets(buf, s);
        self.raw.clear();
        self.raw.extend_from_slice(&buf[..len]);
        self.headers.clear();
        self.connection.clear();
        let method = req.method.unwrap_or_default();
        self.method = Some(match method {
            "POST" => Method::POST,
            "GET" => Method::GET,
            m => Method::from_bytes(m.as_bytes())
                .map_err(|_| HeadError::Malformed("bad method".into()))?,
        });
        let target = req.path.unwrap_or_default();
        let parts = target::split(self.method(), target)?;
        self.target.clear();
        self.target.push_str(target);
        self.path = parts.path;
        self.query = parts.query;
        self.http11 = req.version == Some(1);
        let mut length: Option<u64> = None;
        let mut codings = Codings::default();
        let mut hosts = 0;
        let mut close = !self.http11;
        let mut expects_continue = false;
        for h in req.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            self.headers.push((at(name), at(value)));
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_length(value).ok_or(HeadError::BadLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::BadLength);
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                codings.add(value);
            } else if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case(b"connection") {
                self.connection.push(at(value));
                if fields::listed_in(value, b"close") {
                    close = true;
                } else if !self.http11 && fields::listed_in(value, b"keep-alive") {
                    close = false;
                }
            } else if name.eq_ignore_ascii_case(b"expect") {
                expects_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        // Exactly one coding, chunked: a gateway that decoded only the last of several would
        // forward a still-encoded body.
        let chunked = codings.present();
        if chunked && (!codings.only_chunked() || !self.http11) {
            return Err(HeadError::BadTransferEncoding);
        }
        if self.http11 && hosts != 1 {
            return Err(HeadError::Malformed(
                "an HTTP/1.1 request needs exactly one Host header".into(),
            ));
        }
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3); such a request is the
        // last on its connection.
        if chunked && length.is_some() {
            close = true;
        }
        self.framing = if chunked {
            Some(BodyFraming::Chunked)
        } else {
            length.map(BodyFraming::Length)
        };
        self.close = close;
        self.expects_continue = expects_continue && self.http11;
        Ok(Parsed::Complete(len))
    }

    pub fn method(&self) -> &Method {
        self.method.as_ref().unwrap_or(&Method::GET)
    }

    /// The path, without the query (`/` for an absolute-form target without one).
    pub fn path(&self) -> &str {
        match &self.target[self.path.clone()] {
            "" => "/",
            p => p,
        }
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.query.clone().map(|q| &self.target[q])
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.raw[v.clone()])
    }

    /// Every header as (name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// Whether a `Connection` field of the request names `name` (then it is not forwarded).
    pub fn connection_lists(&self, name: &[u8]) -> bool {
        self.connection
            .iter()
            .any(|v| fields::listed_in(&self.raw[v.clone()], name))
    }

    pub fn is_head(&self) -> bool {
        self.method() == Method::HEAD
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        match self.framing {
            Some(BodyFraming::Length(n)) => n > 0,
            Some(BodyFraming::Chunked) => true,
            None => false,
        }
    }
}

/// A Content-Length value: digits only.
pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RequestHead, HeadError> {
        let mut h = RequestHead::default();
        match h.parse(raw.as_bytes())? {
            Parsed::Complete(n) => assert_eq!(n, raw.find("\r\n\r\n").unwrap() + 4),
            Parsed::Partial => panic!("partial"),
        }
        Ok(h)
    }

    #[test]
    fn reads_path_query_headers_and_framing() {
        let h = parse("POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-User-Id: u\r\n\r\nbody").unwrap();
        assert_eq!(h.method(), Method::POST);
        assert_eq!(h.path(), "/v1/chat/completions");
        assert_eq!(h.query(), Some("x=1"));
        assert_eq!(h.header("x-user-id"), Some(&b"u"[..]));
        assert_eq!(h.framing, Some(BodyFraming::Length(12)));
        assert!(!h.close && h.http11);
        let h = parse("GET http://gw:8080/health HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((h.path(), h.query(), h.close), ("/health", None, true));
        let h = parse("GET /v1/models HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(!h.close);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Hop , close\r\n\r\n").unwrap();
        assert!(h.close && h.connection_lists(b"x-hop") && !h.connection_lists(b"host"));
    }

    fn parse_err(raw: &str) -> HeadError {
        match parse(raw) {
            Ok(_) => panic!("parsed: {raw}"),
            Err(e) => e,
        }
    }

    #[test]
    fn transfer_encoding_wins_and_bad_framing_is_refused() {
        let h = parse(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.framing, Some(BodyFraming::Chunked));
        assert!(h.close);
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
        ] {
            assert_eq!(parse_err(bad), HeadError::BadLength, "{bad}");
        }
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse_err(bad), HeadError::BadTransferEncoding, "{bad}");
        }
        for bad in [
            "GET /health HTTP/1.1\r\n\r\n",
            "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(matches!(parse_err(bad), HeadError::Malformed(_)), "{bad}");
        }
        assert!(matches!(
            parse_err("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let mut h = RequestHead::default();
        assert!(matches!(
            h.parse(b"POST /v1/chat/completions HTTP/1.1\r\nHost:"),
            Ok(Parsed::Partial)
        ));
    }
}
