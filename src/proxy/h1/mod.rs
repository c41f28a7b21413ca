//! A lean HTTP/1.1 layer for the data plane, on Pingora's streams, listener and connectors.
//!
//! Pingora's HTTP sessions build a header map per request and per response, clone the response
//! header, spawn a task per pooled connection and read the clock for every timer; for a
//! gateway whose exchanges are one small request and one response that was most of its CPU per
//! request. Here heads are parsed once into offsets, the few headers the gateway reads are
//! found by a scan, heads and small bodies leave in one write, and idle server connections sit
//! in a per-thread pool.

use std::ops::Range;

pub mod chunked;
pub mod client;
pub mod pool;
pub mod request;
pub mod timed;
pub mod upstream;

/// Whether `name` is one of the comma-separated tokens of a `Connection` value (a field the
/// sender marked hop-by-hop, RFC 9110 7.6.1).
pub fn listed_in(connection: &[u8], name: &[u8]) -> bool {
    connection
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

/// The offsets of `part` within `buf`; empty when `part` is not inside it (httparse hands out
/// slices of the parsed buffer, except a static empty string for a missing or non-ASCII reason
/// phrase).
pub(crate) fn offsets(buf: &[u8], part: &[u8]) -> Range<usize> {
    let (base, at) = (buf.as_ptr() as usize, part.as_ptr() as usize);
    if at < base || at + part.len() > base + buf.len() {
        return 0..0;
    }
    at - base..at - base + part.len()
}

pub use client::{BodyError, ClientConn, NextRequest};
pub use request::{HeadError, RequestHead};
pub use upstream::{UpstreamConn, UpstreamError};
