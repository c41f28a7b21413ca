//! Errors the gateway answers itself, in OpenAI's shape `{"error":{"message","type","code"}}`.

use bytes::Bytes;
use pingora::http::ResponseHeader;

/// An error answered by the gateway (a server's own errors pass through untouched).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("The model `{0}` does not exist or is not served by this gateway.")]
    UnknownModel(String),
    #[error("Invalid URL ({0} {1})")]
    UnknownPath(String, String),
    #[error("Method not allowed; use {0}")]
    WrongMethod(&'static str),
    #[error("The request body is larger than the {0} bytes this gateway accepts.")]
    TooLarge(usize),
    #[error("No healthy server is available for the model `{0}`; retry later.")]
    NoHealthyServer(String),
    #[error("The servers for the model `{0}` could not be reached.")]
    Unreachable(String),
    #[error("The server for the model `{0}` did not answer in time.")]
    Timeout(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("This API key does not have the `{0}` scope.")]
    MissingScope(&'static str),
    #[error("Rate limit reached for this API key: {0}. Retry after {1} s.")]
    RateLimited(String, u64),
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) => 400,
            ProxyError::Unauthorized(_) => 401,
            ProxyError::MissingScope(_) => 403,
            ProxyError::RateLimited(..) => 429,
            ProxyError::UnknownModel(_) | ProxyError::UnknownPath(..) => 404,
            ProxyError::WrongMethod(_) => 405,
            ProxyError::TooLarge(_) => 413,
            ProxyError::Unreachable(_) => 502,
            ProxyError::NoHealthyServer(_) => 503,
            ProxyError::Timeout(_) => 504,
        }
    }

    fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            ProxyError::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            ProxyError::Unauthorized(_) => ("invalid_request_error", "invalid_api_key"),
            ProxyError::MissingScope(_) => ("permission_error", "insufficient_scope"),
            ProxyError::RateLimited(..) => ("rate_limit_error", "rate_limit_exceeded"),
            ProxyError::UnknownModel(_) => ("invalid_request_error", "model_not_found"),
            ProxyError::UnknownPath(..) => ("invalid_request_error", "unknown_url"),
            ProxyError::WrongMethod(_) => ("invalid_request_error", "method_not_allowed"),
            ProxyError::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            ProxyError::NoHealthyServer(_) => ("server_error", "no_healthy_server"),
            ProxyError::Unreachable(_) => ("server_error", "upstream_unreachable"),
            ProxyError::Timeout(_) => ("server_error", "upstream_timeout"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let (kind, code) = self.kind_and_code();
        let v = serde_json::json!({
            "error": {"message": self.to_string(), "type": kind, "code": code}
        });
        Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
    }

    /// The response header, with `Retry-After` where retrying makes sense.
    pub fn header(&self, body_len: usize, retry_after_secs: u64) -> ResponseHeader {
        let mut h = ResponseHeader::build(self.status(), Some(4)).expect("valid status");
        let _ = h.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string());
        if matches!(self, ProxyError::NoHealthyServer(_)) {
            let _ = h.insert_header(http::header::RETRY_AFTER, retry_after_secs.to_string());
        }
        if let ProxyError::RateLimited(_, secs) = self {
            let _ = h.insert_header(http::header::RETRY_AFTER, secs.to_string());
        }
        if let ProxyError::Unauthorized(_) = self {
            let _ = h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer");
        }
        if let ProxyError::WrongMethod(m) = self {
            let _ = h.insert_header(http::header::ALLOW, *m);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = ProxyError::UnknownModel("gpt-x".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-x"));
        assert_eq!(e.status(), 404);
        let h = ProxyError::NoHealthyServer("m".into()).header(10, 7);
        assert_eq!(h.headers.get("retry-after").unwrap(), "7");
    }
}
