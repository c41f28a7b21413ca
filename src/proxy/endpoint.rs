//! The OpenAI paths the gateway answers and how each body names its model.

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
    /// A known path with the wrong method.
    WrongMethod(&'static str),
    Unknown,
}

const JSON_PATHS: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/score",
    "/v1/audio/speech",
];
const MULTIPART_PATHS: [&str; 2] = ["/v1/audio/transcriptions", "/v1/audio/translations"];

pub fn classify(method: &Method, path: &str) -> Endpoint {
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
    if JSON_PATHS.contains(&path) {
        post(Endpoint::Json)
    } else if MULTIPART_PATHS.contains(&path) {
        post(Endpoint::Multipart)
    } else if path == "/v1/models" {
        get(Endpoint::Models)
    } else if path == "/health" {
        get(Endpoint::Health)
    } else {
        Endpoint::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
