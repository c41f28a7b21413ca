//! A lean HTTP/1.1 layer for the data plane, on Pingora's streams, listener and connectors.
//!
//! Pingora's HTTP sessions build a header map per request and per response, clone the response
//! header, spawn a task per pooled connection and read the clock for every timer; for a
//! gateway whose exchanges are one small request and one response that was most of its CPU per
//! request. Here heads are parsed once into offsets, the few headers the gateway reads are
//! found by a scan, heads and small bodies leave in one write, and idle server connections sit
//! in a per-thread pool.

pub mod chunked;
pub mod client;
pub mod fields;
pub mod head_scan;
pub mod pool;
#[cfg(test)]
mod proptests;
pub mod request;
pub mod target;
pub mod timed;
pub mod upstream;

pub use client::{BodyError, ClientConn, NextRequest};
pub use request::{HeadError, RequestHead};
pub use upstream::{UpstreamConn, UpstreamError};
