//! Incremental decoding of `Transfer-Encoding: chunked` bodies, in place over a read buffer.
//!
//! The trailer section after the last chunk is read as strictly as a head: every line up to
//! the blank one must be a field line within the limits below, else the body is refused. (A
//! decoder that skipped arbitrary lines there would swallow a request hidden behind `0\r\n`,
//! which a front end that ends the body at the last chunk sees as the next request: the two
//! would disagree on where requests start.) Valid trailer fields are then dropped, never
//! merged into the head (RFC 9110 6.5.1), so `Content-Length`, `Transfer-Encoding` or `Host`
//! placed there change nothing.

use bytes::{Buf, BytesMut};

/// Longest chunk-size line (with extensions) or trailer line accepted.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted (they are read and dropped).
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields accepted.
pub const MAX_TRAILER_FIELDS: u32 = 64;

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size is not hexadecimal")]
    BadSize,
    #[error("a chunk-size or trailer line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the trailer section is larger than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
    #[error("the trailer section has more than {MAX_TRAILER_FIELDS} fields")]
    TooManyTrailers,
    #[error("a trailer line is not a valid field line (name, colon, value without controls)")]
    BadTrailer,
    #[error("a chunk is not followed by CRLF")]
    MissingCrlf,
    #[error("a line ends in a bare LF")]
    BareLf,
    #[error("a chunk extension is malformed")]
    BadExtension,
}

/// What the front of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// This many body bytes at the front of the buffer: the caller consumes exactly them.
    Data(usize),
    /// More input is needed.
    NeedMore,
    /// The last chunk and the trailers are consumed.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    /// In the trailer section: bytes and fields seen so far.
    Trailers {
        bytes: usize,
        fields: u32,
    },
    Done,
}

/// The decoder's position in a chunked body.
#[derive(Debug, Clone, Copy)]
pub struct Chunked(State);

impl Default for Chunked {
    fn default() -> Self {
        Self(State::Size)
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.0 == State::Done
    }

    /// Advance over framing at the front of `buf` (consuming it) up to the next body bytes.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.0 {
                State::Size => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if buf.len() > MAX_LINE {
                            Err(ChunkError::LineTooLong)
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    if nl > MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    let size = parse_size(crlf_line(&buf[..nl])?)?;
                    buf.advance(nl + 1);
                    self.0 = if size == 0 {
                        State::Trailers {
                            bytes: 0,
                            fields: 0,
                        }
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (buf.len() as u64).min(left);
                    self.0 = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    return Ok(Step::Data(n as usize));
                }
                State::DataEnd => match buf.first() {
                    None => return Ok(Step::NeedMore),
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::NeedMore),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.0 = State::Size;
                        }
                        Some(_) => return Err(ChunkError::MissingCrlf),
                    },
                    Some(_) => return Err(ChunkError::MissingCrlf),
                },
                State::Trailers { bytes, fields } => {
                    // Limits are checked on complete lines only (a line still arriving is
                    // bounded by MAX_LINE), so the verdict never depends on where the input was
                    // split: the CR of the closing blank line may come in a read of its own.
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        return if buf.len() > MAX_LINE {
                            Err(ChunkError::LineTooLong)
                        } else {
                            Ok(Step::NeedMore)
                        };
                    };
                    if nl > MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    let line = crlf_line(&buf[..nl])?;
                    if line.is_empty() {
                        buf.advance(nl + 1);
                        self.0 = State::Done;
                        continue;
                    }
                    if bytes + nl + 1 > MAX_TRAILERS {
                        return Err(ChunkError::TrailersTooLarge);
                    }
                    if !is_field_line(line) {
                        return Err(ChunkError::BadTrailer);
                    }
                    if fields >= MAX_TRAILER_FIELDS {
                        return Err(ChunkError::TooManyTrailers);
                    }
                    buf.advance(nl + 1);
                    self.0 = State::Trailers {
                        bytes: bytes + nl + 1,
                        fields: fields + 1,
                    };
                }
                State::Done => return Ok(Step::Done),
            }
        }
    }
}

/// A line without its CRLF; a bare LF is refused (lenient line endings are what request
/// smuggling between two parsers feeds on).
fn crlf_line(line: &[u8]) -> Result<&[u8], ChunkError> {
    line.strip_suffix(b"\r").ok_or(ChunkError::BareLf)
}

/// Whether `line` (without its CRLF) is a field line (RFC 9112 5, RFC 9110 5.5): a token
/// name, the colon right after it, and a value of visible characters, spaces, tabs and
/// obs-text. A line that starts with whitespace (obs-fold), has whitespace before the colon,
/// or carries a CR, NUL or other control is not.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', line) else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// A character of a token (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The hexadecimal size at the start of a chunk-size line. Extensions (`;name=value`, after
/// optional whitespace) are ignored but must be printable.
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (digits, ext) = line.split_at(end);
    let ext_ok = {
        let rest = ext.trim_ascii_start();
        (rest.is_empty() && ext.iter().all(|&b| b == b' ' || b == b'\t'))
            || (rest.first() == Some(&b';')
                && rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)))
    };
    if !ext_ok {
        return Err(ChunkError::BadExtension);
    }
    if digits.is_empty() || digits.len() > 15 {
        return Err(ChunkError::BadSize);
    }
    let mut size = 0u64;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(ChunkError::BadSize)?;
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode the input arriving as `pieces` (reads).
    fn decode<'a>(mut input: impl Iterator<Item = &'a [u8]>) -> Result<Vec<u8>, ChunkError> {
        let mut d = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        loop {
            match d.step(&mut buf)? {
                Step::Data(n) => {
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                Step::NeedMore => match input.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => panic!("ran out of input"),
                },
                Step::Done => return Ok(out),
            }
        }
    }

    fn decode_in_pieces(wire: &[u8], piece: usize) -> Result<Vec<u8>, ChunkError> {
        decode(wire.chunks(piece))
    }

    /// The decoder's verdict on `wire`, checked to be the same however the input is split: at
    /// every point into two reads, and into reads of a few fixed sizes.
    fn verdict(wire: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let whole = decode_in_pieces(wire, wire.len());
        for at in 1..wire.len() {
            let (a, b) = wire.split_at(at);
            assert_eq!(decode([a, b].into_iter()), whole, "split at {at}");
        }
        for piece in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(decode_in_pieces(wire, piece), whole, "pieces of {piece}");
        }
        whole
    }

    #[test]
    fn decodes_whatever_the_pieces() {
        let wire = b"5\r\nhello\r\n1 ;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in 1..wire.len() {
            assert_eq!(
                decode_in_pieces(wire, piece).unwrap(),
                b"hello 0123456789",
                "pieces of {piece}"
            );
        }
        assert_eq!(verdict(wire).unwrap(), b"hello 0123456789");
    }

    #[test]
    fn refuses_bad_framing() {
        assert_eq!(verdict(b"zz\r\n").unwrap_err(), ChunkError::BadSize);
        assert_eq!(
            verdict(b"2\r\nabX\r\n").unwrap_err(),
            ChunkError::MissingCrlf
        );
        assert_eq!(
            verdict(b"fffffffffffffffff\r\n").unwrap_err(),
            ChunkError::BadSize
        );
        for (wire, err) in [
            (&b"5\nhello\r\n0\r\n\r\n"[..], ChunkError::BareLf),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::MissingCrlf),
            (b"5 xyz\r\nhello\r\n", ChunkError::BadExtension),
            (b"5;a\x01\r\nhello\r\n", ChunkError::BadExtension),
            (b"0\r\n\n", ChunkError::BareLf),
        ] {
            assert_eq!(verdict(wire).unwrap_err(), err, "{wire:?}");
        }
        let long = vec![b'1'; MAX_LINE + 2];
        let mut d = Chunked::default();
        let mut buf = BytesMut::from(&long[..]);
        assert_eq!(d.step(&mut buf).unwrap_err(), ChunkError::LineTooLong);
        let mut long_with_end = long.clone();
        long_with_end.extend_from_slice(b"\r\n");
        let mut d = Chunked::default();
        let mut buf = BytesMut::from(&long_with_end[..]);
        assert_eq!(d.step(&mut buf).unwrap_err(), ChunkError::LineTooLong);
    }

    /// A body of `hello` whose trailer section holds `trailers` (then the blank line).
    fn with_trailers(trailers: &str) -> Vec<u8> {
        format!("5\r\nhello\r\n0\r\n{trailers}\r\n").into_bytes()
    }

    #[test]
    fn valid_trailer_fields_are_read_and_dropped() {
        for trailers in [
            "",
            "x-checksum: abc\r\n",
            // Fields that must never reach the head are dropped with the rest.
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n",
            "x-empty:\r\nx-b:\tv w \x7e\r\n",
            "x-obs-text: caf\u{e9}\r\n",
        ] {
            assert_eq!(
                verdict(&with_trailers(trailers)).unwrap(),
                b"hello",
                "{trailers:?}"
            );
        }
    }

    #[test]
    fn a_trailer_line_that_is_not_a_field_line_is_refused() {
        for (trailers, err) in [
            // A request hidden behind the last chunk.
            (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n",
                ChunkError::BadTrailer,
            ),
            ("GET /v1/models HTTP/1.1\r\n", ChunkError::BadTrailer),
            // obs-fold, with a space and with a tab.
            ("x-a: 1\r\n folded\r\n", ChunkError::BadTrailer),
            ("x-a: 1\r\n\tfolded\r\n", ChunkError::BadTrailer),
            // A bare CR, a NUL, DEL and other controls in a value.
            ("x-a: 1\rb\r\n", ChunkError::BadTrailer),
            ("x-a: 1\r\r\n", ChunkError::BadTrailer),
            ("x-a: 1\x00\r\n", ChunkError::BadTrailer),
            ("x-a: \x7f\r\n", ChunkError::BadTrailer),
            ("x-a: \x1b[2J\r\n", ChunkError::BadTrailer),
            // Whitespace before the colon, an empty or non-token name, no colon.
            ("x-a : 1\r\n", ChunkError::BadTrailer),
            ("x-a\t: 1\r\n", ChunkError::BadTrailer),
            (": 1\r\n", ChunkError::BadTrailer),
            ("x(a): 1\r\n", ChunkError::BadTrailer),
            ("no colon here\r\n", ChunkError::BadTrailer),
            // A bare LF ends no line.
            ("x-a: 1\n", ChunkError::BareLf),
        ] {
            assert_eq!(verdict(&with_trailers(trailers)), Err(err), "{trailers:?}");
        }
    }

    #[test]
    fn trailers_stay_within_their_limits() {
        let line = |n: usize| format!("x-long: {}\r\n", "v".repeat(n));
        // One line at the limit passes; one byte more does not.
        let at_limit = line(MAX_LINE - "x-long: ".len() - 1);
        assert_eq!(at_limit.len(), MAX_LINE + 1);
        assert_eq!(verdict(&with_trailers(&at_limit)).unwrap(), b"hello");
        let over = line(MAX_LINE);
        assert_eq!(verdict(&with_trailers(&over)), Err(ChunkError::LineTooLong));
        // Lines within their limit, more bytes than the section's.
        let many_lines = line(4000).repeat(MAX_TRAILERS / 4000 + 1);
        assert_eq!(
            verdict(&with_trailers(&many_lines)),
            Err(ChunkError::TrailersTooLarge)
        );
        // Exactly the section's limit passes (whatever read the closing blank line's CR and LF
        // arrive in); one byte more does not.
        let exact = line(4096 - "x-long: \r\n".len()).repeat(4);
        assert_eq!(exact.len(), MAX_TRAILERS);
        assert_eq!(verdict(&with_trailers(&exact)).unwrap(), b"hello");
        let one_more = format!("{exact}x:\r\n");
        assert_eq!(
            verdict(&with_trailers(&one_more)),
            Err(ChunkError::TrailersTooLarge)
        );
        // More fields than allowed, each one short.
        let fields = MAX_TRAILER_FIELDS as usize;
        assert_eq!(
            verdict(&with_trailers(&"x: 1\r\n".repeat(fields))).unwrap(),
            b"hello"
        );
        assert_eq!(
            verdict(&with_trailers(&"x: 1\r\n".repeat(fields + 1))),
            Err(ChunkError::TooManyTrailers)
        );
    }
}
