//! The data plane: an OpenAI-compatible HTTP app on pingora-core that reads each request body
//! (bounded), routes it by model and drives the upstream exchange itself through Pingora's
//! connectors and connection pool. Reading the body before choosing the server is why this is
//! an `HttpServerApp` and not a `ProxyHttp`: stock Pingora 0.9 replays at most 64 KiB of a body
//! read before `upstream_peer`.

mod app;
mod body;
mod endpoint;
mod errors;
mod forward;
mod relay;

pub use app::ProxyApp;
pub use endpoint::Endpoint;
pub use errors::ProxyError;
pub use forward::MAX_ATTEMPTS;
