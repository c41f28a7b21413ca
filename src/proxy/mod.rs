//! The data plane: an OpenAI-compatible app on pingora-core's listener, runtime and connectors
//! that reads each request body (bounded), routes it by model and drives the upstream exchange
//! itself. Reading the body before choosing the server is why this is not a `ProxyHttp`: stock
//! Pingora 0.9 replays at most 64 KiB of a body read before `upstream_peer`. HTTP/1.1 framing
//! on both sides is the lean layer in `h1` (see there for why).

mod app;
mod endpoint;
mod errors;
mod exchange;
mod forward;
pub mod h1;
mod relay;
mod request_ctx;
mod settings;

pub use app::ProxyApp;
pub use endpoint::Endpoint;
pub use errors::ProxyError;
pub use forward::MAX_ATTEMPTS;
