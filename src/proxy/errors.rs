//! Errors the gateway answers itself, in OpenAI's shape `{"error":{"message","type","code"}}`.

use super::h1::UpstreamError;
use bytes::Bytes;

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
    #[error("The server for the model `{0}` sent a response this gateway cannot relay.")]
    BadResponse(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("This API key does not have the `{0}` scope.")]
    MissingScope(&'static str),
    #[error("Rate limit reached for this API key: {0}. Retry after {1} s.")]
    RateLimited(String, u64),
    /// The client sent its request (`head` or `body`) too slowly.
    #[error("The request {0} did not arrive in time.")]
    ClientTimeout(&'static str),
    #[error("The gateway has too many open connections; retry later.")]
    TooManyConnections,
    /// The key cache is older than `[auth] max_stale_secs` (the store is unreachable).
    #[error("API keys cannot be checked right now (the key store has been unreachable for too long); retry later.")]
    KeysUnconfirmed,
}

impl ProxyError {
    /// The answer for an exchange with a server of `model` that failed before anything
    /// reached the client.
    pub fn upstream(e: &UpstreamError, model: &str) -> Self {
        match e {
            UpstreamError::Timeout => ProxyError::Timeout(model.into()),
            UpstreamError::Malformed(_) | UpstreamError::Chunked(_) => {
                ProxyError::BadResponse(model.into())
            }
            UpstreamError::Io(_) | UpstreamError::Closed => ProxyError::Unreachable(model.into()),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) => 400,
            ProxyError::Unauthorized(_) => 401,
            ProxyError::MissingScope(_) => 403,
            ProxyError::RateLimited(..) => 429,
            ProxyError::UnknownModel(_) | ProxyError::UnknownPath(..) => 404,
            ProxyError::WrongMethod(_) => 405,
            ProxyError::TooLarge(_) => 413,
            ProxyError::ClientTimeout(_) => 408,
            ProxyError::TooManyConnections | ProxyError::KeysUnconfirmed => 503,
            ProxyError::Unreachable(_) | ProxyError::BadResponse(_) => 502,
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
            ProxyError::ClientTimeout(_) => ("invalid_request_error", "request_timeout"),
            ProxyError::TooManyConnections => ("server_error", "too_many_connections"),
            ProxyError::KeysUnconfirmed => ("server_error", "keys_unconfirmed"),
            ProxyError::NoHealthyServer(_) => ("server_error", "no_healthy_server"),
            ProxyError::Unreachable(_) => ("server_error", "upstream_unreachable"),
            ProxyError::Timeout(_) => ("server_error", "upstream_timeout"),
            ProxyError::BadResponse(_) => ("server_error", "upstream_bad_response"),
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

    /// The header field the response carries besides its body: `Retry-After` where retrying
    /// makes sense, `WWW-Authenticate` on a 401, `Allow` on a 405.
    pub fn field(&self, retry_after_secs: u64) -> Option<(&'static str, String)> {
        match self {
            ProxyError::NoHealthyServer(_)
            | ProxyError::TooManyConnections
            | ProxyError::KeysUnconfirmed => Some(("retry-after", retry_after_secs.to_string())),
            ProxyError::RateLimited(_, secs) => Some(("retry-after", secs.to_string())),
            ProxyError::Unauthorized(_) => Some(("www-authenticate", "Bearer".into())),
            ProxyError::WrongMethod(m) => Some(("allow", (*m).into())),
            _ => None,
        }
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
        assert_eq!(
            ProxyError::NoHealthyServer("m".into()).field(7),
            Some(("retry-after", "7".into()))
        );
    }
}
