//! The OpenAI paths the gateway answers and how each body names its model.

use crate::identity::Scope;
use http::Method;

/// How a request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Routed by the JSON body's top-level `model`.
    Json,
    /// Routed by the multipart form field `model`.
    Multipart,
    /// `GET /v1/models`: answered by the gateway.
    Models,
    /// `GET /health` on the proxy port: the gateway's own liveness.
    Health,
    /// `OPTIONS *` (the only asterisk-form request the head parser lets through): the methods
    /// the gateway answers.
    ServerOptions,
    /// A known path with the wrong method.
    WrongMethod(&'static str),
    Unknown,
}

/// JSON endpoints and the scope a key needs for each.
const JSON_PATHS: [(&str, Scope); 6] = [
    ("/v1/chat/completions", Scope::Chat),
    ("/v1/completions", Scope::Completions),
    ("/v1/embeddings", Scope::Embeddings),
    ("/v1/rerank", Scope::Embeddings),
    ("/v1/score", Scope::Embeddings),
    ("/v1/audio/speech", Scope::Audio),
];
const MULTIPART_PATHS: [(&str, Scope); 2] = [
    ("/v1/audio/transcriptions", Scope::Audio),
    ("/v1/audio/translations", Scope::Audio),
];

/// How a request is handled, and the scope a key needs for it (matched once per request).
pub fn route(method: &Method, path: &str) -> (Endpoint, Option<Scope>) {
    let post = |e| {
        if method == Method::POST {
            e
        } else {
            Endpoint::WrongMethod("POST")
        }
    };
    let get = |e| {
        if method == Method::GET || method == Method::HEAD {
            e
        } else {
            Endpoint::WrongMethod("GET")
        }
    };
    let find = |paths: &[(&str, Scope)]| paths.iter().find(|(p, _)| *p == path).map(|(_, s)| *s);
    if let Some(scope) = find(&JSON_PATHS) {
        (post(Endpoint::Json), Some(scope))
    } else if let Some(scope) = find(&MULTIPART_PATHS) {
        (post(Endpoint::Multipart), Some(scope))
    } else if path == "/v1/models" {
        (get(Endpoint::Models), Some(Scope::Models))
    } else if path == "/health" {
        (get(Endpoint::Health), None)
    } else if path == "*" {
        (Endpoint::ServerOptions, None)
    } else {
        (Endpoint::Unknown, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(method: &Method, path: &str) -> Endpoint {
        route(method, path).0
    }

    #[test]
    fn classifies_paths_and_methods() {
        assert_eq!(
            classify(&Method::POST, "/v1/chat/completions"),
            Endpoint::Json
        );
        assert_eq!(
            classify(&Method::POST, "/v1/audio/transcriptions"),
            Endpoint::Multipart
        );
        assert_eq!(classify(&Method::GET, "/v1/models"), Endpoint::Models);
        assert_eq!(
            classify(&Method::GET, "/v1/chat/completions"),
            Endpoint::WrongMethod("POST")
        );
        assert_eq!(classify(&Method::POST, "/v1/nope"), Endpoint::Unknown);
        assert_eq!(classify(&Method::OPTIONS, "*"), Endpoint::ServerOptions);
    }

    #[test]
    fn paths_need_their_scope() {
        let scope = |path| route(&Method::POST, path).1;
        assert_eq!(scope("/v1/chat/completions"), Some(Scope::Chat));
        assert_eq!(scope("/v1/completions"), Some(Scope::Completions));
        assert_eq!(scope("/v1/rerank"), Some(Scope::Embeddings));
        assert_eq!(scope("/v1/audio/transcriptions"), Some(Scope::Audio));
        assert_eq!(scope("/v1/models"), Some(Scope::Models));
        assert_eq!(scope("/health"), None);
    }
}
