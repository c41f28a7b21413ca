//! Identity: organizations, users and API keys (spec 000), kept in the store; the key cache
//! that the data plane and the admin API check credentials against without a store round trip.

mod cache;
pub mod limits;
mod model;
mod scope;
mod secret;
mod service;
pub mod sync;
mod token;

pub use cache::{KeyCache, KeyEntry, Refusal};
pub use limits::{Limited, RateLimiter};
pub use model::{ApiKey, Org, User};
pub use scope::{Scope, Scopes};
pub use secret::{hash_secret, hash_secret_hex, parse_hex32};
pub use service::{
    CreateKey, IdentityError, IdentityService, KeyFilter, NewKey, OrgPatch, UserPatch,
};
pub use token::{generate_secret, presented, presented_in, Presented, TokenError};
