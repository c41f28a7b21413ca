//! Routing: what a request asks for (its model and user, read from the body) and which server
//! of that model's pool answers it (session affinity, then least in-flight requests).

pub mod discovery;
mod multipart;
pub mod prefix;
pub mod registry_sync;
mod request;
mod select;
mod table;

pub use request::{route_key_json, route_key_multipart, BodyError, RouteKey};
pub use select::{choose, Choice};
pub use table::{Member, Pool, RoutingTable};
