//! Routing: what a request asks for (its model and user, and its prompt's prefix, read from
//! the body in one scan) and which server of that model's pool answers it, by the pool's
//! policy: session affinity then least in flight, the longest cached prefix within the load
//! balance ([`cache_aware`]), or least in flight alone.

mod cache_aware;
pub mod discovery;
mod least_loaded;
pub mod load_share;
mod multipart;
pub mod prefix;
pub(crate) mod rate;
pub mod registry_sync;
mod request;
mod select;
mod table;

pub use request::{route_key_json, route_key_multipart, BodyError, RouteKey};

/// What this instance shares with the other instances through a shared store (Valkey): the
/// prompts it routed by prefix, and each server's load.
#[derive(Default)]
pub struct RoutingShare {
    pub prefixes: prefix::share::PrefixShare,
    pub loads: load_share::LoadShare,
}
pub use select::{choose, Choice};
pub use table::{Balance, Member, Pool, RoutingTable};
