//! Usage records: one per proxied request (time, key, user, org, model, server, status,
//! latency, TTFT for streams, tokens), handed off the hot path to a batching recorder that
//! writes them to the store once a second, and the queries the admin API answers from them.

pub mod query;
mod record;
mod recorder;
pub mod spool;

pub use record::UsageRecord;
pub use recorder::{UsageRecorder, UsageService};
