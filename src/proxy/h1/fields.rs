//! What request and response heads share: the `Connection` token scan, offsets of parsed parts,
//! and the tally of `Transfer-Encoding` fields.

use std::ops::Range;

/// Whether `name` is one of the comma-separated tokens of a `Connection` value (a field the
/// sender marked hop-by-hop, RFC 9110 7.6.1).
pub fn listed_in(connection: &[u8], name: &[u8]) -> bool {
    connection
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

/// The `Transfer-Encoding` fields of a head, tallied as they are scanned. The one framing
/// either side accepts is a single field naming the single coding `chunked`: a coding list
/// (`gzip, chunked`), a repeated field or another coding would be a body this layer cannot
/// decode (or, on a request, one a second parser could frame differently).
#[derive(Default)]
pub(crate) struct Codings {
    fields: u32,
    chunked: bool,
}

impl Codings {
    pub fn add(&mut self, value: &[u8]) {
        self.fields += 1;
        self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
    }

    /// Whether any `Transfer-Encoding` field was seen.
    pub fn present(&self) -> bool {
        self.fields > 0
    }

    /// Exactly one field, `chunked`.
    pub fn only_chunked(&self) -> bool {
        self.fields == 1 && self.chunked
    }
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
