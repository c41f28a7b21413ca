//! Upstream inference servers: their parsed URLs and the live per-server state the data plane uses.

pub mod backend;
pub mod others_load;
pub mod prefill_pace;
mod url;

pub use backend::Backend;
pub use url::{ServerUrl, UrlError};
